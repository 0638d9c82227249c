"""The wall-clock budget: no cycle starts once the completed ones took the budget (summed from the
ledger, so a resumed experiment keeps its count), the experiment completes with the cycles it ran, and
a bad budget is refused naming the field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from archloop.clients import aio_channel
from archloop.v1 import novelty_pb2_grpc
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.requests import event
from services.controller.states import ExperimentState, Phase
from services.controller.tests.seed import write_corpus


@pytest.mark.parametrize("budget", [-1.0, float("inf"), float("nan")])
def test_a_bad_budget_is_refused_naming_the_field(budget: float) -> None:
    config = experiment_config.with_defaults(experiment_config.from_mapping({}))
    config.wall_clock_budget_seconds = budget  # as a gRPC client may send it (YAML refuses inf itself)
    with pytest.raises(experiment_config.InvalidArgument, match="wall_clock_budget_seconds"):
        experiment_config.validate(config)


@pytest.mark.slow
async def test_a_spent_budget_ends_the_experiment_after_its_cycles(start_service, tmp_path: Path) -> None:
    novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
    write_corpus(tmp_path / "corpus")
    config = experiment_config.with_defaults(
        experiment_config.from_mapping({"cycles": 3, "wall_clock_budget_seconds": 20})
    )
    experiment_config.validate(config)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment(
        "bud", experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    # cycle 1 ran (as before a restart) for 30 s: more than the budget
    ledger.start_cycle("bud", 1, event("bud", 1, "cycle_started"))
    ledger.set_cycle("bud", 1, None, started_ms=int(time.time() * 1000) - 30_000, phase=Phase.COMPLETED)
    peers = Peers(None, None, novelty_pb2_grpc.NoveltyServiceStub(aio_channel(novelty.address)), None)
    settings = LoopSettings(tmp_path / "work", tmp_path / "corpus")
    runner = ExperimentRunner("bud", config, ledger, peers, settings)

    assert not runner._budget_spent(1)  # a cycle already started always finishes
    assert runner._budget_spent(2)
    assert await runner.run() == ExperimentState.COMPLETED

    assert [c.cycle for c in ledger.cycles("bud")] == [1]  # cycle 2 never started
    completed = [e for e in ledger.events("bud") if e.WhichOneof("payload") == "experiment_completed"]
    assert len(completed) == 1
    assert completed[0].experiment_completed.cycles_completed == 1
    assert completed[0].experiment_completed.budget_spent
    assert ledger.experiment_of("bud").state == ExperimentState.COMPLETED


def test_an_unspent_budget_lets_the_next_cycle_start(tmp_path: Path) -> None:
    config = experiment_config.with_defaults(
        experiment_config.from_mapping({"cycles": 3, "wall_clock_budget_seconds": 60})
    )
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment(
        "bud", experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    ledger.start_cycle("bud", 1, event("bud", 1, "cycle_started"))
    ledger.set_cycle("bud", 1, None, started_ms=int(time.time() * 1000) - 30_000, phase=Phase.COMPLETED)
    ledger.start_cycle("bud", 2, event("bud", 2, "cycle_started"))
    ledger.set_cycle("bud", 2, None, started_ms=int(time.time() * 1000) - 29_000, phase=Phase.COMPLETED)
    runner = ExperimentRunner(
        "bud", config, ledger, Peers(None, None, None, None), LoopSettings(tmp_path / "w", tmp_path / "c")
    )
    assert not runner._budget_spent(3)  # 59 s of 60 spent
    ledger.start_cycle("bud", 3, event("bud", 3, "cycle_started"))
    ledger.set_cycle("bud", 3, None, started_ms=int(time.time() * 1000) - 2_000, phase=Phase.COMPLETED)
    assert runner._budget_spent(4)
    unlimited = experiment_config.with_defaults(experiment_config.from_mapping({"cycles": 5}))
    runner.ctx.config = unlimited
    assert not runner._budget_spent(4)
