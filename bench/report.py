"""Shared by the benchmarks: replace one marked section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(text: str, start: str, end: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `text` (which begins with `start` and ends with `end`) in place of the old section."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)
