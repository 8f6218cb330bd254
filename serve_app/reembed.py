"""CLI: `python -m serve_app.reembed [--env-file FILE ...]` embeds every stored image of the
search catalog with the configured CLIP model ahead of a model change.

Run it with the settings the server will start with (CLIP_MODEL, CLIP_PRETRAINED, the catalog
path and the object store) on the machine that holds the catalog database, while the server
still runs the old model: it loads the new model here (CLIP_DEVICE), reads each original from
the object store and stores the new vectors beside the old ones, batch by batch (resumable:
run it again after an interruption). Searches keep using the old vectors. When the server is
then started with the new model it has little or nothing left to embed and switches at once.
Exit status 0 when every image has its new vector, 1 when some could not be made (they are
listed; the server sets them aside when it switches), 2 for bad settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, re-embed, print the outcome."""
    parser = argparse.ArgumentParser(prog="python -m serve_app.reembed", description=__doc__)
    parser.add_argument(
        "--env-file",
        action="append",
        type=Path,
        default=None,
        help="settings file to read (repeatable; default: .env)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from core.storage import make_object_store
    from deployments.clip_model import ClipModel
    from deployments.vector_store.reembed import CatalogFile, Reembedder
    from deployments.vector_store.schema import LegacyModel
    from serve_app import deploy_configs
    from serve_app.placement import torch_threads
    from serve_app.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.env_file or ".env")
        index = deploy_configs.vector_index_config(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not index.db_path.exists():
        print(f"no catalog database at {index.db_path}: nothing to re-embed")
        return 0
    target = deploy_configs.clip_space(settings)
    catalog = CatalogFile(
        index.db_path, target, LegacyModel(index.legacy_model, index.legacy_pretrained)
    )
    try:
        if catalog.active_space == target:
            print(f"the catalog already holds vectors of {target.describe()}: nothing to do")
            return 0
        print(f"re-embedding from {catalog.active_space.describe()} to {target.describe()}")
        threads = torch_threads(settings, os.cpu_count() or 1)
        model = ClipModel(
            deploy_configs.clip_embedder_config(settings, settings.clip_device, threads)
        )
        worker = Reembedder(
            catalog,
            make_object_store(index.storage).get,
            model.embed_images,
            batch_size=settings.image_search_reembed_batch,
            retry_s=5.0,
            switch=False,
            log_every_s=10.0,
        )
        stop = threading.Event()

        def interrupt(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        finished = worker.run(stop)
        status = worker.status()
        print(
            f"{status['done']} of {status['total']} images have vectors of {target.describe()}"
            f" ({status['images_per_s']} images/s)"
        )
        if not finished:
            print("interrupted: run again to go on from here")
            return 1
        left = status["total"] - status["done"]
        if left:
            print(f"{left} image(s) could not be embedded (see the log above)")
            return 1
        return 0
    finally:
        catalog.close()


if __name__ == "__main__":
    sys.exit(main())
