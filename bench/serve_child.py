"""A process that serves the offline profile the way `serve run configs/offline-cpu.yaml`
does, on a port of its own, for the cold-start benchmark.

    python -m bench.serve_child --port P [--settings JSON] [--fill PROJECT:COUNT:DIM]

It starts a Ray of its own (`address="local"`, the machine's 2 CPUs, no dashboard), Serve's
proxy on 127.0.0.1:P and the application built from `configs/offline.env` with the JSON
settings on top (model paths, storage, which modules), then waits for SIGTERM and shuts
everything down.

`--fill`: once the application runs, COUNT random unit vectors of size DIM become the
images of PROJECT (`bench.inputs.fill_graph`, through a VectorIndex handle: only a process
on this Ray can hold one). The caller sees it done when the project lists COUNT images.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading

from bench.env import prepare_environment


def main() -> None:
    prepare_environment()  # before Ray and the app (huggingface_hub) are imported
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--fill", default=None, metavar="PROJECT:COUNT:DIM")
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = build_app(
            {"env_files": ["configs/offline.env"], "settings": json.loads(args.settings)}
        )
        serve.run(app, name="ai", route_prefix="/", blocking=False)
        if args.fill:
            from bench.inputs import fill_graph

            project, count, dim = args.fill.split(":")
            fill_graph("ai", project, int(count), int(dim))
        stop.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
