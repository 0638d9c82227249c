"""The corpus leaderboard: every corpus program's first-epoch accuracy on the embedded protocol, so that
what the loop admits can be placed against what it learned from (issue 34).

    load(path)                  {code sha256: Entry} of a table ({} when there is none)
    Leaderboard(entries)        the corpus's accuracies: best, percentile(accuracy), quantile(q)
    for_corpus(programs, table) the leaderboard of these programs (by the sha256 of their code)

The table ships with the package (`archloop/data/lemur-v3-leaderboard-v1.json.gz`), recomputed by
`archloop corpus leaderboard` (tools/corpus_leaderboard.py: the real evaluator and sandbox, the
embedded protocol, resumable), so a report never reruns it. A program that did not train (an error,
over the budget) has no accuracy and is counted apart, not as 0.
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path

from archloop.corpus import code_sha256 as code_sha256  # the key of the table, as the corpus's

TABLE = Path(__file__).parent / "data" / "lemur-v3-leaderboard-v1.json.gz"
TABLE_VERSION = 1


@dataclass(frozen=True)
class Entry:
    status: str
    accuracy: float | None  # None unless status is OK
    parameters: int
    seconds: float

    def row(self) -> list:
        return [self.status, self.accuracy, self.parameters, round(self.seconds, 3)]

    @classmethod
    def from_row(cls, row: list) -> Entry:
        return cls(str(row[0]), None if row[1] is None else float(row[1]), int(row[2]), float(row[3]))


def load(path: Path = TABLE) -> tuple[dict[str, Entry], dict]:
    """({code sha256: entry}, the protocol it was measured with); ({}, {}) when there is no table."""
    if not Path(path).exists():
        return {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    if data.get("version") != TABLE_VERSION:
        return {}, {}
    return {sha: Entry.from_row(row) for sha, row in data["results"].items()}, dict(data["protocol"])


def save(entries: dict[str, Entry], protocol: dict, path: Path = TABLE) -> None:
    payload = {
        "version": TABLE_VERSION,
        "protocol": protocol,
        "results": {sha: entries[sha].row() for sha in sorted(entries)},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(json.dumps(payload, separators=(",", ":")).encode())


class Leaderboard:
    """The accuracies of the corpus programs that trained (sorted), and how many did not."""

    def __init__(self, accuracies: list[float], untrained: int = 0) -> None:
        self.accuracies = sorted(accuracies)
        self.untrained = untrained

    def __len__(self) -> int:
        return len(self.accuracies)

    @property
    def best(self) -> float:
        return self.accuracies[-1] if self.accuracies else math.nan

    def percentile(self, accuracy: float) -> float:
        """The share of the corpus's trained programs below `accuracy` (ties count half), in [0, 100]."""
        if not self.accuracies:
            return math.nan
        below = bisect.bisect_left(self.accuracies, accuracy)
        equal = bisect.bisect_right(self.accuracies, accuracy) - below
        return 100 * (below + equal / 2) / len(self.accuracies)

    def quantile(self, q: float) -> float:
        """The accuracy at quantile q (nearest rank)."""
        if not self.accuracies:
            return math.nan
        index = min(len(self.accuracies) - 1, max(0, math.ceil(q * len(self.accuracies)) - 1))
        return self.accuracies[index]


def for_corpus(programs: dict[str, str], table: dict[str, Entry]) -> tuple[Leaderboard, int]:
    """The leaderboard of `programs` ({model: code}) from the table, and how many it lacks."""
    accuracies, untrained, missing = [], 0, 0
    for code in programs.values():
        entry = table.get(code_sha256(code))
        if entry is None:
            missing += 1
        elif entry.accuracy is None:
            untrained += 1
        else:
            accuracies.append(entry.accuracy)
    return Leaderboard(accuracies, untrained), missing
