"""CLI: `python -m serve_app.tiny --out DIR [--only NAME ...]` builds tiny models into DIR/NAME."""

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
    parser.add_argument("--out", type=Path, required=True, help="root directory for the models")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BUILDERS),
        metavar="NAME",
        help=f"build only this model (repeatable); one of: {', '.join(sorted(BUILDERS))}",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the weights")
    args = parser.parse_args(argv)
    for path in build_tiny_models(args.out, only=args.only, seed=args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
