"""The archive of parents through the whole loop: factor mode with a tournament over the archive, every
service and nats-server as processes (the generator replays a family of valid programs, so candidates
are admitted without a large model), the controller killed with SIGKILL in the middle of the run and
started again on its ledger.

After the run: the archive is the baseline plus every candidate admitted before the last cycle, each
entered once; every candidate records a parent, and that parent is exactly the one the policy picks
from the archive as its cycle began (so the restarted controller chose as the first would have)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from programs import program
from test_faults import Stack, _ledger_phase

from archloop.v1 import controller_pb2
from services.controller import archive
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.report import lineage

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system
CYCLES, PER_CYCLE = 3, 4


def test_the_archive_survives_kill_9_and_parents_are_the_policys_choice(tmp_path: Path, small_corpus) -> None:
    replay = tmp_path / "programs"
    replay.mkdir()
    for i in range(PER_CYCLE * CYCLES):
        (replay / f"p{i:02d}.py").write_text(program(i))
    stack = Stack(tmp_path, small_corpus, replay, pace_seconds=0.3)
    try:
        config = experiment_config.from_mapping({
            "name": "archive", "datasets": ["digits"], "cycles": CYCLES, "candidates_per_cycle": PER_CYCLE,
            "generation": {"mode": "factor", "parent_policy": "tournament", "tournament_size": 2},
            "accuracy_threshold": 0.05, "seed": 7,
            "protocol": {"time_limit_seconds": 60, "max_train_images": 300},
            "lemur_examples_per_cycle": 4, "fine_tune_schedule": {"epochs": 1, "max_seq_len_tokens": 1024},
        })  # fmt: skip
        stub = stack.controller()
        stub.StartExperiment(
            controller_pb2.StartExperimentRequest(experiment_id="arch", config=config), timeout=60
        )
        deadline = time.monotonic() + 600
        while _ledger_phase(stack)[0] < 2 and time.monotonic() < deadline:  # cycle 2 has begun
            time.sleep(0.2)
        assert _ledger_phase(stack)[0] == 2, "cycle 2 never began"
        stack.kill("controller")
        stack.start("controller")
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            experiment = (
                stack.controller()
                .GetExperiment(controller_pb2.GetExperimentRequest(experiment_id="arch"), timeout=30)
                .experiment
            )
            if experiment.state != controller_pb2.EXPERIMENT_STATE_RUNNING:
                break
            time.sleep(1)
        assert experiment.state == controller_pb2.EXPERIMENT_STATE_COMPLETED, experiment.error
    finally:
        stack.stop()

    ledger = Ledger(tmp_path / "controller" / "ledger.sqlite3")
    entries = ledger.archive("arch")
    admitted = [c for c in ledger.admitted("arch") if c.cycle < CYCLES]
    assert admitted, "nothing was admitted before the last cycle: the archive held only the baseline"
    assert [e.entry_id for e in entries] == ["baseline"] + [c.candidate_id for c in admitted]
    assert all(e.fits for e in entries)  # replay: every prompt fits
    by_id = {e.entry_id: e for e in entries}
    for c in admitted:
        assert (by_id[c.candidate_id].accuracy, by_id[c.candidate_id].code) == (c.accuracy, c.code)
    for cycle in range(1, CYCLES + 1):
        candidates = ledger.candidates("arch", cycle)
        assert len(candidates) == PER_CYCLE
        expected = archive.choose_parents(
            controller_pb2.PARENT_POLICY_TOURNAMENT, ledger.archive("arch", before_cycle=cycle), 7, cycle,
            range(PER_CYCLE), 2,
        )  # fmt: skip
        recorded = [json.loads(c.generation_json).get("parent_id", "") for c in candidates]
        assert recorded == [e.entry_id for e in expected], cycle
    later = [json.loads(c.generation_json)["parent_id"] for c in ledger.candidates("arch", CYCLES)]
    assert any(parent != "baseline" for parent in later)  # the tournament draws admitted programs
    # the report's lineage walks each admitted program back to the baseline through recorded parents
    chains = {entry["candidate_id"]: entry for entry in lineage(ledger, "arch")}
    assert set(chains) == {c.candidate_id for c in ledger.admitted("arch")}
    assert all(entry["root"] == "baseline" for entry in chains.values())
    for (
        entry
    ) in chains.values():  # each step's parent is the next step's program, the last one's the baseline
        steps = entry["chain"]
        assert [s["parent_id"] for s in steps] == [s["candidate_id"] for s in steps[1:]] + ["baseline"]
    assert max(entry["generations"] for entry in chains.values()) >= 2 or not any(
        p != "baseline" and p in chains for p in later
    )
