"""The corpus leaderboard (archloop.leaderboard, tools/corpus_leaderboard.py,
services/controller/standing.py): percentiles, the table's round trip, a real build on two programs
through the evaluator's sandbox (and its resumption), and the report columns only for the protocol the
table was measured with."""

from __future__ import annotations

import math
from pathlib import Path

from archloop import leaderboard
from services.controller import config as experiment_config
from services.controller.standing import corpus_board
from services.controller.tests.seed import write_corpus
from tests.programs import program
from tools.corpus_leaderboard import build_leaderboard, embedded_protocol


def test_percentiles_and_quantiles_of_the_corpus() -> None:
    board = leaderboard.Leaderboard([0.1, 0.5, 0.5, 0.9], untrained=3)
    assert board.best == 0.9 and len(board) == 4 and board.untrained == 3
    assert board.percentile(0.5) == 50.0  # one below, two tied (half each): (1 + 1) / 4
    assert board.percentile(1.0) == 100.0 and board.percentile(0.0) == 0.0
    assert board.quantile(0.9) == 0.9 and board.quantile(0.5) == 0.5
    assert math.isnan(leaderboard.Leaderboard([]).best)


def test_the_table_round_trips_and_gives_the_same_bytes(tmp_path: Path) -> None:
    entries = {
        "b" * 64: leaderboard.Entry("OK", 0.75, 1234, 2.5),
        "a" * 64: leaderboard.Entry("OVER_BUDGET", None, 9, 0.1),
    }
    first, second = tmp_path / "one.json.gz", tmp_path / "two.json.gz"
    leaderboard.save(entries, {"dataset": "digits"}, first)
    leaderboard.save(dict(reversed(entries.items())), {"dataset": "digits"}, second)
    assert first.read_bytes() == second.read_bytes()
    assert leaderboard.load(first) == (entries, {"dataset": "digits"})
    assert leaderboard.load(tmp_path / "none.json.gz") == ({}, {})


def test_a_real_build_evaluates_in_the_sandbox_resumes_and_feeds_the_report(tmp_path: Path) -> None:
    programs = {"small-a": program(0), "small-b": program(1)}
    corpus_dir = write_corpus(tmp_path / "corpus", programs)
    table = tmp_path / "board.json.gz"
    total, new, _seconds = build_leaderboard(corpus_dir, workers=1, limit=1, table=table)
    assert (total, new) == (1, 1)
    total, new, _seconds = build_leaderboard(corpus_dir, workers=2, table=table)
    assert (total, new) == (2, 1)  # the first one was not evaluated again
    entries, protocol = leaderboard.load(table)
    assert protocol == embedded_protocol()
    for code in programs.values():
        entry = entries[leaderboard.code_sha256(code)]
        assert entry.status == "OK" and 0.0 <= (entry.accuracy or 0.0) <= 1.0 and entry.parameters > 0

    embedded = experiment_config.with_defaults(experiment_config.from_mapping({}))
    board = corpus_board(corpus_dir, embedded.protocol, table)
    assert board is not None and len(board) == 2
    other = experiment_config.with_defaults(experiment_config.from_mapping({"protocol": {"epochs": 5}}))
    assert corpus_board(corpus_dir, other.protocol, table) is None  # another protocol: no comparison
