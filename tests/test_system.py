"""The whole loop with every real service and a real nats-server: 2 cycles × 4 candidates on digits.

Checked: the experiment completes; the ledger has each candidate once, at its last stage, with a
decision; every event of every cycle arrives on NATS once and in order (a JetStream subscriber) and
through WatchExperiment; the novelty corpus collection holds LEMUR + exactly the admitted candidates;
the trainer ran one job per cycle; the report's files exist. Then the same run with the controller
killed (kill -9) mid-cycle and restarted, and with nats-server down for part of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest

from archloop.eventbus import SUBJECT_PREFIX, connect_nats
from archloop.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    events_pb2,
    novelty_pb2,
    novelty_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from tools.localstack import NatsServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system

# the cycle's events in the order events.proto declares them (the order they happen)
CYCLE_EVENTS = [
    f.name
    for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
    if f.name.startswith("cycle_")
]
TEST_CONFIG = {
    "name": "system",
    "datasets": ["digits"],
    "cycles": 2,
    "candidates_per_cycle": 4,
    "generation": {"mode": "full", "decoding": {"max_new_tokens": 160}},
    "protocol": {"time_limit_seconds": 120, "max_train_images": 400},
    "lemur_examples_per_cycle": 4,
    "fine_tune_schedule": {"epochs": 1, "max_seq_len_tokens": 1024},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class System:
    """The five services and nats-server as processes, for one test."""

    def __init__(self, start_service, tmp_path: Path, corpus_dir: Path) -> None:
        self.start_service = start_service
        self.tmp = tmp_path
        self.nats_port = _free_port()
        self.nats = self._start_nats()
        novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
        evaluator = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"))
        # at most 3 per request: the 4 candidates of a cycle take two generator requests
        generator = start_service("generator", "--batch-size", "4", "--threads", "1", "--max-candidates", "3")
        trainer = start_service(
            "trainer",
            "--state-dir",
            str(tmp_path / "trainer"),
            "--artifacts-dir",
            str(tmp_path / "artifacts"),
            "--worker-threads",
            "1",
        )
        self.addresses = {
            "novelty": novelty.address,
            "evaluator": evaluator.address,
            "generator": generator.address,
            "trainer": trainer.address,
        }
        self.corpus_dir = corpus_dir
        self.controller = self.start_controller()

    def _start_nats(self) -> NatsServerProcess:
        nats = NatsServerProcess(
            self.tmp / "js", self.tmp / "nats-run", self.tmp / "nats.log", port=self.nats_port
        )
        nats.wait_ready()
        return nats

    def start_controller(self):
        peers = [arg for name, address in self.addresses.items() for arg in (f"--{name}-addr", address)]
        proc = self.start_service(
            "controller",
            "--state-dir",
            str(self.tmp / "controller"),
            "--corpus-dir",
            str(self.corpus_dir),
            "--nats-url",
            self.nats.url,
            "--evaluation-concurrency",
            "2",
            "--retry-budget-seconds",
            "120",
            *peers,
        )
        self.stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(proc.address))
        return proc

    def experiment(self, experiment_id: str) -> controller_pb2.Experiment:
        request = controller_pb2.GetExperimentRequest(experiment_id=experiment_id)
        return self.stub.GetExperiment(request, timeout=30).experiment

    def wait(self, experiment_id: str, until, timeout: float = 900) -> controller_pb2.Experiment:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            experiment = self.experiment(experiment_id)
            if until(experiment):
                return experiment
            time.sleep(0.5)
        raise TimeoutError(f"{experiment_id}: {experiment}")


def _done(experiment: controller_pb2.Experiment) -> bool:
    return experiment.state in (
        controller_pb2.EXPERIMENT_STATE_COMPLETED,
        controller_pb2.EXPERIMENT_STATE_FAILED,
        controller_pb2.EXPERIMENT_STATE_STOPPED,
    )


async def _nats_events(url: str, experiment_id: str) -> list[events_pb2.Event]:
    client = await connect_nats(url, name="test")
    try:
        js = client.jetstream()
        subscription = await js.subscribe(f"{SUBJECT_PREFIX}.events.{experiment_id}.>", ordered_consumer=True)
        events = []
        while True:
            try:
                message = await subscription.next_msg(timeout=3)
            except Exception:
                return events
            events.append(events_pb2.Event.FromString(message.data))
    finally:
        await client.close()


def check_one_job_per_cycle(trainer_address: str, experiment_id: str, cycles: int) -> None:
    """The trainer ran exactly one fine-tune per cycle (job id <experiment>-c<cycle>), all SUCCEEDED."""
    trainer = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(trainer_address))
    jobs = [
        j
        for j in trainer.ListFineTunes(trainer_pb2.ListFineTunesRequest(), timeout=30).jobs
        if j.experiment_id == experiment_id
    ]
    assert sorted(j.job_id for j in jobs) == [f"{experiment_id}-c{c}" for c in range(1, cycles + 1)]
    assert all(j.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED for j in jobs)


def _check_run(system: System, experiment_id: str, cycles: int, per_cycle: int) -> None:
    experiment = system.experiment(experiment_id)
    assert experiment.state == controller_pb2.EXPERIMENT_STATE_COMPLETED, experiment.error
    ledger = Ledger(system.tmp / "controller" / "ledger.sqlite3")
    candidates = ledger.candidates(experiment_id)
    assert len(candidates) == cycles * per_cycle
    assert sorted((c.cycle, c.idx) for c in candidates) == [
        (cycle, i) for cycle in range(1, cycles + 1) for i in range(per_cycle)
    ]
    assert all(c.stage == "decided" and c.decision in ("admitted", "rejected", "invalid") for c in candidates)
    assert all(c.eval_status or c.decided_before_training for c in candidates)

    expected = ["experiment_started"] + CYCLE_EVENTS * cycles + ["experiment_completed"]
    events = asyncio.run(_nats_events(system.nats.url, experiment_id))
    assert [e.WhichOneof("payload") for e in events] == expected
    assert [e.cycle for e in events[1:-1]] == [c for c in range(1, cycles + 1) for _ in CYCLE_EVENTS]
    assert len({e.event_id for e in events}) == len(events)
    watched = [
        r.event.WhichOneof("payload")
        for r in system.stub.WatchExperiment(
            controller_pb2.WatchExperimentRequest(experiment_id=experiment_id), timeout=60
        )
    ]
    assert watched == expected

    novelty = novelty_pb2_grpc.NoveltyServiceStub(grpc.insecure_channel(system.addresses["novelty"]))
    collections = {
        c.name: c
        for c in novelty.ListCollections(novelty_pb2.ListCollectionsRequest(), timeout=30).collections
    }
    lemur_models = len({json.loads(line)["model"] for line in (system.corpus_dir / "examples.jsonl").open()})
    admitted = [c for c in candidates if c.decision == "admitted"]
    assert collections[f"{experiment_id}-corpus"].entry_count == lemur_models + len(admitted)

    check_one_job_per_cycle(system.addresses["trainer"], experiment_id, cycles)

    out = system.tmp / "report"
    report = system.stub.GetReport(
        controller_pb2.GetReportRequest(experiment_id=experiment_id, output_dir=str(out)), timeout=300
    )
    assert [s.cycle for s in report.cycles] == list(range(1, cycles + 1))
    assert all(s.generated == per_cycle for s in report.cycles)
    for name in (
        "report.html",
        "cycles.csv",
        "candidates.csv",
        "report.json",
        "valid_rate.png",
        "novelty.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "candidates.csv").read_text().splitlines()) == cycles * per_cycle + 1


def _start(system: System, experiment_id: str) -> None:
    config = experiment_config.from_mapping(TEST_CONFIG)
    system.stub.StartExperiment(
        controller_pb2.StartExperimentRequest(experiment_id=experiment_id, config=config), timeout=60
    )


def test_two_cycles_run_end_to_end_with_events_ledger_and_report(
    start_service, tmp_path, small_corpus
) -> None:
    system = System(start_service, tmp_path, small_corpus)
    try:
        _start(system, "sys-a")
        system.wait("sys-a", _done)
        _check_run(system, "sys-a", 2, 4)
        # starting it again with the same config is a no-op; with another config it is refused
        again = system.stub.StartExperiment(
            controller_pb2.StartExperimentRequest(
                experiment_id="sys-a", config=experiment_config.from_mapping(TEST_CONFIG)
            ),
            timeout=60,
        )
        assert not again.created
        other = experiment_config.from_mapping({**TEST_CONFIG, "cycles": 3})
        with pytest.raises(grpc.RpcError) as caught:
            system.stub.StartExperiment(
                controller_pb2.StartExperimentRequest(experiment_id="sys-a", config=other), timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        system.nats.stop(5)


def test_kill_9_of_the_controller_and_a_nats_outage_lose_nothing(
    start_service, tmp_path, small_corpus
) -> None:
    system = System(start_service, tmp_path, small_corpus)
    try:
        _start(system, "sys-b")
        # kill -9 the controller while cycle 1 is evaluating, start it again on the same ledger
        at_kill = system.wait("sys-b", lambda e: e.candidates_generated >= 2 or _done(e))
        assert not _done(at_kill), "the run ended before the kill: nothing was tested"
        os.kill(system.controller.proc.pid, signal.SIGKILL)
        system.controller.proc.wait()
        system.start_controller()
        # nats-server down for a while during cycle 2, back on the same port and store
        at_outage = system.wait("sys-b", lambda e: e.current_cycle == 2 or _done(e))
        assert not _done(at_outage), "the run ended before the outage: nothing was tested"
        system.nats.stop(5)
        time.sleep(8)
        system.nats = system._start_nats()
        system.wait("sys-b", _done)
        _check_run(system, "sys-b", 2, 4)
    finally:
        system.nats.stop(5)


def test_unreachable_services_fail_the_experiment_with_a_clear_error(
    start_service, tmp_path, small_corpus
) -> None:
    closed = f"127.0.0.1:{_free_port()}"
    peers = [
        arg for name in ("generator", "evaluator", "novelty", "trainer") for arg in (f"--{name}-addr", closed)
    ]
    proc = start_service(
        "controller", "--state-dir", str(tmp_path / "controller"), "--corpus-dir", str(small_corpus),
        "--retry-budget-seconds", "3", *peers,
    )  # fmt: skip
    stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(proc.address))
    config = experiment_config.from_mapping(TEST_CONFIG)
    stub.StartExperiment(
        controller_pb2.StartExperimentRequest(experiment_id="sys-c", config=config), timeout=60
    )
    deadline = time.monotonic() + 120
    while True:
        experiment = stub.GetExperiment(
            controller_pb2.GetExperimentRequest(experiment_id="sys-c"), timeout=30
        ).experiment
        if _done(experiment) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert experiment.state == controller_pb2.EXPERIMENT_STATE_FAILED
    assert "UNAVAILABLE" in experiment.error and "novelty" in experiment.error
    assert Ledger(tmp_path / "controller" / "ledger.sqlite3").candidates("sys-c") == []
    # a config the controller refuses names the field, and nothing is written
    bad = experiment_config.from_mapping({**TEST_CONFIG, "accuracy_threshold": 2.0})
    with pytest.raises(grpc.RpcError) as caught:
        stub.StartExperiment(
            controller_pb2.StartExperimentRequest(experiment_id="sys-d", config=bad), timeout=60
        )
    assert (
        caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "accuracy_threshold" in caught.value.details()
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetExperiment(controller_pb2.GetExperimentRequest(experiment_id="sys-d"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_then_resume_completes_with_nothing_lost(start_service, tmp_path, small_corpus) -> None:
    system = System(start_service, tmp_path, small_corpus)
    try:
        _start(system, "sys-e")
        system.wait("sys-e", lambda e: e.candidates_generated >= 1 or _done(e))
        stopped = system.stub.StopExperiment(
            controller_pb2.StopExperimentRequest(experiment_id="sys-e"), timeout=120
        ).experiment
        assert stopped.state == controller_pb2.EXPERIMENT_STATE_STOPPED
        time.sleep(2)
        assert system.experiment("sys-e").state == controller_pb2.EXPERIMENT_STATE_STOPPED  # it stays stopped
        system.stub.ResumeExperiment(
            controller_pb2.ResumeExperimentRequest(experiment_id="sys-e"), timeout=60
        )
        system.wait("sys-e", _done)
        _check_run(system, "sys-e", 2, 4)
    finally:
        system.nats.stop(5)


def test_an_experiment_whose_base_model_the_generator_does_not_serve_is_refused(
    start_service, tmp_path, small_corpus
) -> None:
    """Its adapters would be trained on one model and sampled on another: refused before anything is
    written, naming both models."""
    import shutil

    from archloop.basemodel import TINY_MODEL_DIR

    other = tmp_path / "other-model"
    shutil.copytree(TINY_MODEL_DIR, other)
    settings = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**settings, "archloop_copy": True}))  # another sha256
    system = System(start_service, tmp_path, small_corpus)
    config = experiment_config.from_mapping({**TEST_CONFIG, "base_model": str(other)})
    with pytest.raises(grpc.RpcError) as caught:
        system.stub.StartExperiment(
            controller_pb2.StartExperimentRequest(experiment_id="sys-m", config=config), timeout=120
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "config.base_model" in caught.value.details() and "generator serves" in caught.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        system.experiment("sys-m")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_corpus_without_architecture_graphs_is_refused_naming_the_command(
    start_service, tmp_path, small_corpus
) -> None:
    """J_arch against a corpus with no graphs would read 0 for everything: refused, not measured."""
    bare = tmp_path / "bare-corpus"
    bare.mkdir()
    (bare / "examples.jsonl").write_text((small_corpus / "examples.jsonl").read_text())
    system = System(start_service, tmp_path, bare)
    config = experiment_config.from_mapping(dict(TEST_CONFIG))
    with pytest.raises(grpc.RpcError) as caught:
        system.stub.StartExperiment(
            controller_pb2.StartExperimentRequest(experiment_id="sys-a", config=config), timeout=120
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no architecture graphs" in caught.value.details()
    assert "archloop corpus structure" in caught.value.details()
