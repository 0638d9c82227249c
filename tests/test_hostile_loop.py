"""The evaluator's hostile-program corpus as generator output, through the whole loop: every service
and nats-server as processes, the generator replaying the corpus (one cycle, each program once).

Checked: the experiment completes; every program got one of its allowed verdicts (the same ones the
evaluator's own corpus test allows), none was admitted, no file appeared where a program tried to
write, no connection reached the host's loopback listener, no sandbox process is left, and every
service is still serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_faults import Stack

from archloop.clients import health_status
from archloop.v1 import controller_pb2
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.evaluator.tests.test_hostile import (  # noqa: F401 (listener is a fixture)
    CORPUS,
    ESCAPE,
    PORT_PLACEHOLDER,
    _sandbox_processes,
    listener,
)
from tools.localstack import SERVICE_NAMES

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system


def test_hostile_programs_as_generator_output_go_through_the_loop_harmlessly(
    tmp_path: Path,
    small_corpus: Path,
    listener,  # noqa: F811 (the imported fixture)
) -> None:
    port, accepted = listener
    programs = {name: code.replace(PORT_PLACEHOLDER, str(port)) for name, (code, _allowed) in CORPUS.items()}
    replay = tmp_path / "hostile"
    replay.mkdir()
    for name, code in programs.items():
        (replay / f"{name}.py").write_text(code)
    stack = Stack(tmp_path, small_corpus, replay, pace_seconds=0.0)
    try:
        config = experiment_config.from_mapping({
            "name": "hostile", "datasets": ["digits"], "cycles": 1, "candidates_per_cycle": len(programs),
            "generation": {"mode": "full"}, "protocol": {"time_limit_seconds": 5, "max_train_images": 400},
            "lemur_examples_per_cycle": 4, "fine_tune_schedule": {"epochs": 1, "max_seq_len_tokens": 1024},
        })  # fmt: skip
        experiment = stack.run_experiment("hostile", config, 900)
        assert experiment.state == controller_pb2.EXPERIMENT_STATE_COMPLETED, experiment.error

        candidates = Ledger(tmp_path / "controller" / "ledger.sqlite3").candidates("hostile")
        by_code = {code.strip(): name for name, code in programs.items()}
        seen = {}
        for c in candidates:
            name = by_code[c.code.strip()]
            seen[name] = c
            allowed = CORPUS[name][1]  # the verdicts the evaluator's own corpus test allows
            assert c.eval_status in allowed, (name, c.eval_status)
            assert c.decision != "admitted", name
        assert set(seen) == set(programs)  # each program exactly once
        assert len(candidates) == len(programs)
        assert not Path(ESCAPE).exists()
        assert accepted == []
        assert not _sandbox_processes()
        for name in ("novelty", "evaluator", "generator", "trainer", "controller"):
            assert health_status(stack.address[name], SERVICE_NAMES[name]) == "SERVING", name
    finally:
        stack.stop()
