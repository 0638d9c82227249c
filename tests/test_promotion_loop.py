"""Promotion and the per-cycle proxy audit through the whole loop: every service and nats-server as
processes (the generator replays a family of valid programs), the controller killed with SIGKILL while
cycle 1's promotion is under way (filtering, its audit not yet written) and started again on its ledger.

After the run: each cycle promoted exactly the top-k valid, novel candidates by first-epoch accuracy
(the restarted controller chose as the first would have), each of them trained for promotion.epochs;
each cycle has one audit and one cycle_audited event, and the audit recomputes exactly from the ledger;
the report carries it."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
from programs import program
from test_faults import Stack

from archloop.v1 import controller_pb2
from services.controller import audit, selection
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.report import write_report
from services.controller.states import selection_rules

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system
CYCLES, PER_CYCLE, TOP_K, EPOCHS = 2, 6, 3, 12


def _promotion_under_way(stack: Stack) -> bool:
    """Cycle 1 is filtering and its audit is not written yet (its promoted runs are in flight)."""
    path = stack.tmp / "controller" / "ledger.sqlite3"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            row = db.execute("SELECT phase, audit_json FROM cycles WHERE cycle=1").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == "FILTERING" and row[1] == ""


def test_promotion_and_the_audit_survive_kill_9_and_recompute_from_the_ledger(
    tmp_path: Path, small_corpus
) -> None:
    replay = tmp_path / "programs"
    replay.mkdir()
    for i in range(PER_CYCLE * CYCLES):
        (replay / f"p{i:02d}.py").write_text(program(i))
    stack = Stack(tmp_path, small_corpus, replay, pace_seconds=0.2)
    try:
        config = experiment_config.from_mapping({
            "name": "promo", "datasets": ["digits"], "cycles": CYCLES, "candidates_per_cycle": PER_CYCLE,
            "accuracy_threshold": 0.05, "seed": 3,
            "promotion": {"top_k": TOP_K, "epochs": EPOCHS, "min_spearman": 0.5},
            "protocol": {"time_limit_seconds": 120, "max_train_images": 300},
            "lemur_examples_per_cycle": 4, "fine_tune_schedule": {"epochs": 1, "max_seq_len_tokens": 1024},
        })  # fmt: skip
        stack.controller().StartExperiment(
            controller_pb2.StartExperimentRequest(experiment_id="promo", config=config), timeout=60
        )
        deadline = time.monotonic() + 600
        while not _promotion_under_way(stack) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _promotion_under_way(stack), "cycle 1's promotion was never seen under way"
        stack.kill("controller")
        stack.start("controller")
        experiment = stack.wait_done("promo", 900)
        assert experiment.state == controller_pb2.EXPERIMENT_STATE_COMPLETED, experiment.error
    finally:
        stack.stop()

    ledger = Ledger(tmp_path / "controller" / "ledger.sqlite3")
    stored = experiment_config.from_json(ledger.experiment_of("promo").config_json)
    rules = selection_rules(stored)
    audited = [e for e in ledger.events("promo") if e.WhichOneof("payload") == "cycle_audited"]
    assert sorted(e.cycle for e in audited) == list(range(1, CYCLES + 1))  # one each, none twice
    for cycle in range(1, CYCLES + 1):
        rows = ledger.candidates("promo", cycle)
        expected = selection.promotable([r.for_selection() for r in rows], TOP_K, *rules[1:])
        assert len(expected) == TOP_K
        promoted = [r.candidate_id for r in rows if r.promoted_status]
        assert sorted(promoted) == sorted(expected), cycle
        for r in rows:
            if r.promoted_status:
                assert r.promoted_status == "OK" and r.promoted_accuracy is not None
                assert r.flops and r.flops > 0 and r.param_count
        # the audit recomputes exactly from the ledger's rows
        recorded = json.loads(ledger.cycle_of("promo", cycle).audit_json)
        assert recorded == audit.as_json(audit.proxy_audit(rows, EPOCHS, 0.5))
        assert recorded["promoted"] == TOP_K and recorded["epochs"] == EPOCHS
        event = next(e.cycle_audited for e in audited if e.cycle == cycle)
        assert event.promoted == TOP_K and event.warning == recorded["warning"]
        assert event.message == recorded["message"]
    _, files = write_report(ledger, "promo", tmp_path / "report", small_corpus)
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(document["proxy_audit"]) == {"1", "2"}
    assert (tmp_path / "report" / "proxy_audit.png") in files
    assert "Proxy audit per cycle" in (tmp_path / "report" / "report.html").read_text()
