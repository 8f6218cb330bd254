"""CLI: `python -m serve_app.tiny --out DIR [--only NAME ...]` builds tiny models into DIR/NAME;
`python -m serve_app.tiny --hub-cache DIR` builds a Hugging Face hub cache in DIR holding
stand-ins for the production defaults (serve_app/tiny/hub_cache.py), for a rehearsal of the
production config with `HF_HOME=DIR HF_HUB_OFFLINE=1`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the requested tiny models and print one path per line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from serve_app.tiny import BUILDERS, build_tiny_models

    parser = argparse.ArgumentParser(prog="python -m serve_app.tiny", description=__doc__)
    parser.add_argument("--out", type=Path, help="root directory for the models")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BUILDERS),
        metavar="NAME",
        help=f"build only this model (repeatable); one of: {', '.join(sorted(BUILDERS))}",
    )
    parser.add_argument(
        "--hub-cache",
        type=Path,
        metavar="HF_HOME",
        help="build the hub cache of stand-ins for the default model ids in this HF_HOME",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the weights")
    args = parser.parse_args(argv)
    if args.out is None and args.hub_cache is None:
        parser.error("give --out DIR (tiny models) and/or --hub-cache DIR (hub stand-ins)")
    if args.out is not None:
        for path in build_tiny_models(args.out, only=args.only, seed=args.seed).values():
            print(path)
    if args.hub_cache is not None:
        from serve_app.tiny.hub_cache import build_hub_cache, hub_cache_files

        home = args.hub_cache.expanduser().absolute()
        build_hub_cache(home, seed=args.seed)
        for repo_id, files in hub_cache_files(home).items():
            print(repo_id)
            for name, size in files.items():
                print(f"  {name}  {size / 1e6:.1f} MB")
        print(f"# serve with: HF_HOME={home} HF_HUB_OFFLINE=1 (in the environment of ray start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
