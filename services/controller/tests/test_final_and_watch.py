"""The final stage (fully training the top-k admitted models for the proxy-reliability study) against a
real evaluator, and `archloop watch` following events on a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from archloop.eventbus import connect_nats, ensure_stream, publish_event
from archloop.prompts import BASELINE_FILE as BASELINE
from services.controller import config as experiment_config
from services.controller.evaluators import EvaluatorPool
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.requests import event
from services.controller.selection import Decision, Verdict
from services.controller.tests.seed import add_evaluated, write_corpus

pytestmark = pytest.mark.slow


async def test_the_final_stage_trains_the_top_k_admitted_models_longer(start_service, tmp_path: Path) -> None:
    evaluator = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"))
    write_corpus(tmp_path / "corpus")
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {"cycles": 1, "final_training": {"top_k": 2, "epochs": 2}, "protocol": {"max_train_images": 300}}
        )
    )
    experiment_config.validate(config)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment(
        "fin", experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    ledger.start_cycle("fin", 1, event("fin", 1, "cycle_started"))
    wider = BASELINE.read_text().replace(
        "nn.Linear(128, out_shape[0])", "nn.Linear(128, out_shape[0], bias=True)"
    )
    for idx, (code_i, accuracy) in enumerate(
        [(BASELINE.read_text(), 0.5), (wider, 0.6), (BASELINE.read_text(), 0.1)]
    ):
        cid = add_evaluated(ledger, "fin", 1, idx, code_i, accuracy)
        ledger.record_decision(cid, Decision(Verdict.ADMITTED if accuracy > 0.4 else Verdict.REJECTED, "", 0))
        ledger.record_decided(cid)
    peers = Peers(None, EvaluatorPool(evaluator.address), None, None)
    runner = ExperimentRunner(
        "fin", config, ledger, peers, LoopSettings(tmp_path / "work", tmp_path / "corpus")
    )
    try:
        await runner.final_training.run()
    finally:
        await peers.evaluator.close()
    final = {c.candidate_id: c.final_accuracy for c in ledger.candidates("fin")}
    assert final["fin-c1-0000"] is not None and final["fin-c1-0001"] is not None
    assert 0.0 <= final["fin-c1-0000"] <= 1.0
    assert final["fin-c1-0002"] is None  # not admitted


def test_watch_prints_each_event_and_ends_with_the_experiment(nats_server, tmp_path: Path) -> None:
    async def publish() -> None:
        client = await connect_nats(nats_server.url, name="test")
        js = client.jetstream()
        await ensure_stream(js)
        for cycle, kind in ((0, "experiment_started"), (1, "cycle_started"), (1, "experiment_completed")):
            await publish_event(js, event("watch-1", cycle, kind))
        await client.close()

    asyncio.run(publish())
    result = subprocess.run(
        [sys.executable, "-m", "tools.cli", "watch", "watch-1", "--nats-url", nats_server.url],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[3] for line in lines] == [
        "experiment_started",
        "cycle_started",
        "experiment_completed",
    ]
    assert all(line.startswith("watch-1 cycle ") for line in lines)
