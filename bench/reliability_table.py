"""Turn the reliability drills' numbers into the markdown table of docs/reliability.md.

    RELIABILITY_REPORT=.data/reliability.jsonl \\
        python -m pytest tests/integration/test_drill_*.py -q
    python -m bench.reliability_table .data/reliability.jsonl            # the table, to stdout
    python -m bench.reliability_table .data/reliability.jsonl --notes    # with a notes column

The drills (tests/integration/test_drill_*.py) append one JSON object per drill and run to
the file named by $RELIABILITY_REPORT; when a drill appears more than once, its last row wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = (
    ("drill", "Drill"),
    ("injected", "What was injected"),
    ("sent", "Requests sent"),
    ("acknowledged", "Acknowledged"),
    ("lost", "Lost"),
    ("orphans", "Orphans found"),
    ("recovery_s", "Time to recover"),
)


def load(path: Path) -> list[dict]:
    """The latest row of each drill, in the order the drills first appear."""
    rows: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["drill"]] = row  # a dict keeps the first position, takes the new value
    return list(rows.values())


def cell(key: str, value: object) -> str:
    if value is None:
        return "–"
    if key == "recovery_s":
        return f"{float(value):.1f} s"  # type: ignore[arg-type]
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], notes: bool = False) -> str:
    columns = list(COLUMNS) + ([("notes", "Notes")] if notes else [])
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(key, row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="JSON lines written by the drills")
    parser.add_argument("--notes", action="store_true", help="add the drills' notes column")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(
            f"{args.report}: no such file (run the drills with RELIABILITY_REPORT set)",
            file=sys.stderr,
        )
        return 1
    rows = load(args.report)
    if not rows:
        print(f"{args.report}: no drill rows", file=sys.stderr)
        return 1
    sys.stdout.write(table(rows, notes=args.notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
