"""Where a cycle's admitted programs stand against the corpus they learned from (issue 34): the corpus
leaderboard (archloop.leaderboard: every corpus program trained once on the embedded protocol) read
beside the cycle's admitted first-epoch accuracies. Only when the experiment's protocol is the one
the table was measured with; otherwise the columns are NaN (a comparison across protocols means
nothing).

    corpus_best                  the corpus's best accuracy on the protocol
    best_admitted                the cycle's best admitted accuracy
    best_admitted_percentile     the cycle's best admitted program's percentile in the corpus
    median_admitted_percentile   the median admitted program's percentile
    admitted_over_p90 / _p99     admitted programs above the corpus's 90th / 99th percentile
    wiring_new_over_p90 / _p99   the same, for the wiring-new admitted alone
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from archloop import corpus, leaderboard
from services.controller import stats
from services.controller.ledger import CandidateRow

STANDING_COLUMNS = ("corpus_best", "best_admitted", "best_admitted_percentile", "median_admitted_percentile",
                    "admitted_over_p90", "admitted_over_p99", "wiring_new_over_p90",
                    "wiring_new_over_p99")  # fmt: skip
_COMPARED = ("dataset", "epochs", "batch_size", "learning_rate", "momentum", "dropout", "seed",
             "param_budget", "validation_fraction")  # fmt: skip


def corpus_board(
    corpus_dir: Path, protocol: object, table: Path | None = None
) -> leaderboard.Leaderboard | None:
    """The leaderboard of the corpus's programs, or None when there is no table for this protocol
    (`protocol`: the experiment's EvaluationProtocol; `table`: default the packaged one). The dashboard
    asks for a report document on every update, so the table and the corpus are read once per version
    of their files."""
    table = table or leaderboard.TABLE
    examples = Path(corpus_dir) / "examples.jsonl"
    if not table.exists() or not examples.exists():
        return None
    boards = _boards(str(table), table.stat().st_mtime_ns, str(examples), examples.stat().st_mtime_ns)
    return boards.get(tuple(getattr(protocol, name) for name in _COMPARED))


@functools.lru_cache(maxsize=4)
def _boards(table: str, _table_version: int, examples: str, _examples_version: int) -> dict:
    """{the measured protocol's compared fields: the corpus's leaderboard} ({} when there is none)."""
    entries, measured = leaderboard.load(Path(table))
    if not entries:
        return {}
    try:
        programs = corpus.training_programs(Path(examples).parent)
    except (OSError, corpus.CorpusError):
        return {}
    board, _missing = leaderboard.for_corpus(programs, entries)
    return {tuple(measured.get(name) for name in _COMPARED): board} if len(board) else {}


def standing_columns(candidates: list[CandidateRow], board: leaderboard.Leaderboard | None) -> dict:
    if board is None:
        return dict.fromkeys(STANDING_COLUMNS, math.nan)
    admitted = [c for c in candidates if c.admitted and c.accuracy is not None]
    percentiles = [board.percentile(c.accuracy) for c in admitted if c.accuracy is not None]
    p90, p99 = board.quantile(0.90), board.quantile(0.99)
    new = [c for c in admitted if c.topology_sha256 and not c.wiring_known_as]
    return {
        "corpus_best": board.best,
        "best_admitted": max((c.accuracy or 0.0 for c in admitted), default=math.nan),
        "best_admitted_percentile": max(percentiles) if percentiles else math.nan,
        "median_admitted_percentile": stats.median(percentiles) if percentiles else math.nan,
        "admitted_over_p90": sum((c.accuracy or 0) > p90 for c in admitted),
        "admitted_over_p99": sum((c.accuracy or 0) > p99 for c in admitted),
        "wiring_new_over_p90": sum((c.accuracy or 0) > p90 for c in new),
        "wiring_new_over_p99": sum((c.accuracy or 0) > p99 for c in new),
    }
