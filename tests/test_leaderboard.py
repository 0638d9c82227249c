"""The corpus leaderboard (archloop.leaderboard, tools/corpus_leaderboard.py,
services/controller/standing.py): percentiles, the table's round trip, a real build on two programs
through the evaluator's sandbox (and its resumption), and the report columns only for the protocol the
table was measured with."""

from __future__ import annotations

import json
import math
from pathlib import Path

from archloop import leaderboard
from archloop.prompts import BASELINE_FILE as BASELINE
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.report import write_report
from services.controller.requests import event
from services.controller.selection import Decision, Verdict
from services.controller.standing import corpus_board
from services.controller.tests.seed import add_evaluated, write_corpus
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


def test_a_real_build_evaluates_in_the_sandbox_resumes_and_feeds_the_report(
    tmp_path: Path, monkeypatch
) -> None:
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

    # the report places an admitted program against it
    monkeypatch.setattr(leaderboard, "TABLE", table)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment(
        "b", experiment_config.to_json(embedded), experiment_config.config_sha256(embedded)
    )
    ledger.start_cycle("b", 1, event("b", 1, "cycle_started"))
    best = max(entries[leaderboard.code_sha256(code)].accuracy or 0.0 for code in programs.values())
    admitted = add_evaluated(ledger, "b", 1, 0, BASELINE.read_text(), min(1.0, best + 0.01))
    ledger.record_decision(admitted, Decision(Verdict.ADMITTED, "accuracy ≥ τ and novel", 0))
    write_report(ledger, "b", tmp_path / "out", corpus_dir)
    [row] = json.loads((tmp_path / "out" / "report.json").read_text())["cycles"]
    assert row["corpus_best"] == best and row["best_admitted_percentile"] == 100.0
    assert row["admitted_over_p90"] == 1 and row["wiring_new_over_p90"] == 0  # its wiring was not recorded
    assert 'id="standing-table"' in (tmp_path / "out" / "report.html").read_text()
