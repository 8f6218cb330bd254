"""Run the benchmarks and write docs/benchmarks.md.

    python -m bench                       # all, full size (index: 50k and 200k vectors)
    python -m bench --index-sizes 50000   # the 200k index alone takes tens of minutes here
    python -m bench --quick               # shorter runs, smaller index, fewer starts
    python -m bench --only serving,mixed  # some of: coldstart, index, serving, embedding, mixed,
                                          # search, duplicates, reembed, speech, models (by
                                          # default only where CUDA is available)
    python -m bench.duplicates            # one benchmark alone, printed (also bench.index_bench,
                                          # bench.reembed, bench.speech_stream)
    python -m bench --only models --device cuda --compile   # real-sized models on a GPU

Tiny models are built into a temporary directory (or `--models DIR`); apps are deployed on
a Ray of this process's own (`address="local"`) on loopback ports, and everything is shut
down at the end. Raw figures go to `--json` (default .data/benchmarks.json, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.context import Context, Section
from bench.env import REPO, prepare_environment
from bench.machine import git_revision, machine_info

BENCHMARKS = (
    "coldstart",
    "index",
    "serving",
    "embedding",
    "mixed",
    "search",
    "duplicates",
    "reembed",
    "speech",
    "models",
)
# Run by default only where CUDA is available (real-sized models are slow on a small CPU).
CUDA_DEFAULT_ONLY = ("models",)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all; "
        f"{','.join(CUDA_DEFAULT_ONLY)} only where CUDA is available)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, smaller sizes")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds per comparison (default 3, quick 1)",
    )
    parser.add_argument(
        "--index-sizes",
        default=None,
        help="comma-separated vector counts (default 50000,200000; quick 20000)",
    )
    parser.add_argument(
        "--index-data",
        default="lowrank",
        help="comma-separated: lowrank (CLIP-like), uniform (worst case)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="raw results (default: .data/benchmarks.json, not committed)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="tiny models already built (python -m serve_app.tiny --out DIR)",
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch directory")
    parser.add_argument(
        "--device",
        default=None,
        help="models benchmark: torch device (default cuda where available, else cpu)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODE",
        help="models benchmark, CUDA: also time torch.compile of the UNet "
        "(mode default, or e.g. max-autotune; takes minutes)",
    )
    parser.add_argument(
        "--real-models",
        type=Path,
        default=None,
        help="models and reembed benchmarks: directory for the real-sized random-weight "
        "models, kept and reused (default: built in the scratch directory)",
    )
    args = parser.parse_args(argv)
    if args.only is None:
        cuda = _cuda_available()
        args.only = [n for n in BENCHMARKS if cuda or n not in CUDA_DEFAULT_ONLY]
    else:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if args.device is None:
        args.device = "cuda" if _cuda_available() else "cpu"
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.index_sizes is None:
        args.index_sizes = "20000" if args.quick else "50000,200000"
    args.index_sizes = [int(v) for v in args.index_sizes.split(",") if v.strip()]
    args.index_data = [v.strip() for v in args.index_data.split(",") if v.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    prepare_environment()  # before anything imports huggingface_hub or Ray
    args = parse_args(argv)
    command = "python -m bench" + (
        ""
        if argv is None and len(sys.argv) <= 1
        else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    began = time.perf_counter()
    started_at = datetime.now(UTC)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-", dir=args.work) as tmp:
        work = Path(tmp)
        models = args.models
        if models is None:
            from bench.inputs import build_models

            print("building the tiny models ...", flush=True)
            models = build_models(work / "models")
        ctx = Context(work=work, models=models, quick=args.quick, rounds=args.rounds)
        sections: dict[str, Section] = {}
        failures: dict[str, str] = {}
        try:
            for name in BENCHMARKS:
                if name not in args.only:
                    continue
                print(f"running {name} ...", flush=True)
                t0 = time.perf_counter()
                try:
                    sections[name] = _run_one(name, ctx, args)
                    sections[name].seconds = time.perf_counter() - t0
                except Exception:  # noqa: BLE001 - report it and go on with the others
                    failures[name] = traceback.format_exc()
                    print(failures[name], file=sys.stderr, flush=True)
                print(f"{name} took {time.perf_counter() - t0:.0f} s", flush=True)
        finally:
            ctx.serve.shutdown()
        machine["load_average_end"] = machine_info()["load_average"]
        total_s = time.perf_counter() - began
        from bench.report import render

        markdown = render(
            sections, failures, args, command, machine, started_at, total_s, git_revision()
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
        json_path = args.json or (REPO / ".data" / "benchmarks.json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps(
                {
                    "command": command,
                    "machine": machine,
                    "seconds": total_s,
                    "sections": {
                        k: {"figures": v.figures, "seconds": v.seconds} for k, v in sections.items()
                    },
                    "failures": failures,
                },
                indent=1,
                default=str,
            )
        )
    print(f"wrote {args.out} ({total_s:.0f} s)", flush=True)
    return 1 if failures else 0


def _run_one(name: str, ctx: Context, args: argparse.Namespace) -> Section:
    if name == "coldstart":
        from bench import coldstart

        return coldstart.run(ctx)
    if name == "index":
        from bench import index

        return index.run(ctx, args.index_sizes, args.index_data)
    if name == "serving":
        from bench import serving

        return serving.run(ctx)
    if name == "embedding":
        from bench import embedding

        return embedding.run(ctx)
    if name == "models":
        from bench import models

        return models.run(ctx, args.device, args.compile, args.real_models)
    if name == "mixed":
        from bench import mixed

        return mixed.run(ctx)
    if name == "search":
        from bench import search_load

        return search_load.run(ctx)
    if name == "duplicates":
        from bench import duplicates

        return duplicates.run(ctx)
    if name == "reembed":
        from bench import reembed

        return reembed.run(ctx, args.real_models)
    if name == "speech":
        from bench import speech_stream

        return speech_stream.run(ctx)
    raise ValueError(f"unknown benchmark {name!r}")


if __name__ == "__main__":
    sys.exit(main())
