"""Repaired candidates in the ledger and the report: an old ledger gains the columns, and the report
puts the raw model's valid rate beside the repaired one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from archloop.v1 import events_pb2
from services.controller.ledger import ADDED_CANDIDATE_COLUMNS, SCHEMA, Ledger
from services.controller.report import cycle_rows
from services.controller.tests.seed import add_evaluated


def test_a_ledger_written_before_the_repair_columns_gains_them_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    old_schema = SCHEMA
    for name, declaration in ADDED_CANDIDATE_COLUMNS.items():
        old_schema = old_schema.replace(f"    {name} {declaration},\n", "")
    assert "raw_eval_status" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO candidates (candidate_id, experiment_id, cycle, idx, code, generation_json, stage,"
            " created_ms, updated_ms) VALUES ('c', 'e', 1, 0, 'x = 1', '{}', 'generated', 0, 0)"
        )
    ledger = Ledger(path)
    row = ledger.candidate("c")
    assert row is not None and row.code == "x = 1"
    assert (row.repaired, row.raw_eval_status) == (0, "")
    ledger.close()
    Ledger(path).close()  # a second open finds them and adds nothing


def _candidate(ledger: Ledger, index: int, valid: bool, repaired: bool = False, raw: str = "") -> None:
    add_evaluated(ledger, "e", 1, index, "x", 0.5 if valid else None, repaired=repaired, raw_status=raw)


def test_the_report_counts_a_repaired_candidate_by_what_the_model_wrote(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment("e", "{}", "x")
    ledger.start_cycle("e", 1, events_pb2.Event(event_id="e.1.cycle_started", experiment_id="e", cycle=1))
    _candidate(ledger, 0, valid=True)  # the model's own, valid
    _candidate(ledger, 1, valid=True, repaired=True, raw="FORWARD_ERROR")  # valid only once repaired
    _candidate(ledger, 2, valid=True, repaired=True, raw="OK")  # a repair that changed a valid program
    _candidate(ledger, 3, valid=False)
    row = cycle_rows(ledger, "e", 0.4)[0]
    assert row["valid_fraction"] == pytest.approx(3 / 4)
    assert row["raw_valid"] == 2 and row["raw_valid_fraction"] == pytest.approx(2 / 4)
    assert row["repaired"] == 2
