"""What one run of the benchmarks shares (`Context`: scratch and log directories, the tiny
models, run size, the local Ray + Serve) and what each benchmark returns (`Section`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import LocalServe


@dataclass
class Context:
    """What the benchmarks share in one run."""

    work: Path
    models: Path
    quick: bool
    rounds: int
    serve: LocalServe = field(default_factory=LocalServe)
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = self.work / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def subdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Section:
    """One benchmark's markdown and its figures (for the headline table and the JSON)."""

    title: str
    markdown: str
    figures: dict[str, Any]
    seconds: float = 0.0
