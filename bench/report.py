"""Shared by the benchmarks: replace one marked section of docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def publish(name: str, results: object, section: str, start: str, end: str, write: bool) -> None:
    """Save raw figures to bench/results/<name>.json, print the section, and with `write` put it in
    docs/benchmarks.md."""
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(section)
    if write:
        write_section(section, start, end)


def write_section(text: str, start: str, end: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `text` (which begins with `start` and ends with `end`) in place of the old section."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    path.write_text(current)


def machine() -> str:
    """The machine a benchmark ran on, for the section's header line."""
    memory_gib = psutil.virtual_memory().total / 2**30
    return f"{psutil.cpu_count()} cores, {memory_gib:.0f} GiB, Python {platform.python_version()}"
