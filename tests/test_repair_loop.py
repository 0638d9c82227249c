"""Repair through the whole loop (generation.repair on): every service and nats-server as processes, the
generator replaying two programs. A repaired candidate keeps its raw code, its raw program is evaluated
too, and the report's raw-model valid rate stays apart from the repaired one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from programs import program
from test_faults import Stack

from archloop.v1 import controller_pb2
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.report import cycle_rows

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system


def test_a_repaired_candidate_is_evaluated_raw_and_repaired_and_reported_apart(
    tmp_path: Path, small_corpus: Path
) -> None:
    valid = program(1)
    first_conv = valid.split("nn.Conv2d(", 1)[1].split(",", 1)[0]  # in_shape[1]
    wrong_channels = valid.replace(f"nn.Conv2d({first_conv},", "nn.Conv2d(5,", 1)  # raw: fails its forward
    replay = tmp_path / "programs"
    replay.mkdir()
    (replay / "a_wrong_channels.py").write_text(wrong_channels)
    (replay / "b_valid.py").write_text(valid)
    stack = Stack(tmp_path, small_corpus, replay, pace_seconds=0.0)
    try:
        config = experiment_config.from_mapping({
            "name": "repair", "datasets": ["digits"], "cycles": 1, "candidates_per_cycle": 2,
            "generation": {"mode": "full", "repair": True},
            # the two programs differ in one number: the pre-check would reject the second untrained
            "novelty_precheck": False,
            "protocol": {"time_limit_seconds": 60, "max_train_images": 400},
            "lemur_examples_per_cycle": 4, "fine_tune_schedule": {"epochs": 1, "max_seq_len_tokens": 1024},
        })  # fmt: skip
        experiment = stack.run_experiment("repair", config, 600)
        assert experiment.state == controller_pb2.EXPERIMENT_STATE_COMPLETED, experiment.error

        ledger = Ledger(tmp_path / "controller" / "ledger.sqlite3")
        rows = {json.loads(c.generation_json)["raw_code"]: c for c in ledger.candidates("repair")}
        broken, fine = rows[wrong_channels], rows[valid]
        assert broken.repaired and broken.raw_eval_status == "FORWARD_ERROR"
        assert broken.eval_status == "OK" and "nn.LazyConv2d" in broken.code
        assert json.loads(broken.generation_json)["repairs"] == ["lazy"]
        # a valid program is repaired too (lazy layers), and its raw program is valid
        assert fine.repaired and fine.raw_eval_status == "OK" and fine.eval_status == "OK"
        summary = cycle_rows(ledger, "repair", 0.4)[0]
        assert summary["valid_fraction"] == 1.0 and summary["raw_valid_fraction"] == 0.5
    finally:
        stack.stop()
