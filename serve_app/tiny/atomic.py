"""Writing a tiny model directory atomically: all of it appears at once, or nothing does."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def make_readable(root: Path) -> None:
    """chmod a freshly written tree to 755 for directories and 644 for files."""
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_atomic(
    out_dir: Path, marker: str, kind: str, writer: Callable[[Path, int], None], seed: int
) -> Path:
    """Run `writer` into a temporary sibling of `out_dir` and rename it into place.

    An `out_dir` already holding `marker` is returned untouched; an empty one is replaced;
    anything else there raises FileExistsError.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if (out_dir / marker).is_file():
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not a {kind} directory")
        out_dir.rmdir()  # empty directory: replace it
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writer(tmp, seed)
        make_readable(tmp)  # mkdtemp is 0700; the model may be shared
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if (out_dir / marker).is_file():  # another process finished first
                return out_dir
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
