"""Fault injection across the whole system: kill -9 every component at points of a running experiment,
restart it, and check that nothing was lost, doubled or left behind.

nats-server and the five services run as processes on fixed loopback ports (a restart comes back on
the same address, as a pod behind its Service does). The generator is the real service with its
replay backend (tests/programs.py: valid programs that differ, plus broken ones), so candidates are
admitted, rejected and invalid and every phase has work. An experiment of 3 cycles × 6 candidates
runs while a schedule kills components at chosen points (the phase each kill actually met is
recorded: short phases are sometimes over before the kill lands). After the run:
- the experiment COMPLETED; the ledger has each candidate once, decided, with an evaluation status;
- no program was admitted twice; the corpus collection holds LEMUR + exactly the admitted candidates,
  each cycle collection exactly the cycle's valid candidates;
- every event of every cycle arrived once and in order (JetStream);
- one trainer job per cycle, all SUCCEEDED;
- no process any component started outlives it (kill -9 included), nor the stack.

The table of injections is printed; with ARCHLOOP_FAULT_TABLE=path it is also written there as
Markdown (docs/reliability.md holds the last one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
from programs import write_family
from test_system import CYCLE_EVENTS, _free_port, _nats_events, check_one_job_per_cycle

from archloop.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    novelty_pb2,
    novelty_pb2_grpc,
)
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from tools.localstack import NatsServerProcess, ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system

CYCLES, PER_CYCLE = 3, 6
CONFIG = {
    "name": "faults",
    "datasets": ["digits"],
    "cycles": CYCLES,
    "candidates_per_cycle": PER_CYCLE,
    "accuracy_threshold": 0.2,
    "generation": {"mode": "full"},
    "protocol": {"time_limit_seconds": 120, "max_train_images": 400},
    "lemur_examples_per_cycle": 4,
    "fine_tune_schedule": {"epochs": 1, "max_seq_len_tokens": 1024},
}
ORDER = ["PREPARING", "GENERATING", "EVALUATING", "FILTERING", "FINE_TUNING", "DONE"]


@dataclass
class Injection:
    component: str
    cycle: int  # the cycle the trigger waits for (0: right after the start)
    phase: str  # kill at the first sight of this phase (or later in that cycle)
    note: str
    observed: str = ""
    restart_seconds: float = 0.0
    orphans_left: int = 0
    done: bool = field(default=False)


SCHEDULE = [
    Injection("novelty", 0, "PREPARING", "mid-import of the LEMUR corpus"),
    Injection("generator", 1, "GENERATING", "while candidates stream"),
    Injection("evaluator", 1, "EVALUATING", "mid-candidate (2 in flight)"),
    Injection("controller", 1, "EVALUATING", "evaluations in flight"),
    Injection("novelty", 1, "FILTERING", "mid-admit"),
    Injection("trainer", 1, "FINE_TUNING", "mid-job"),
    Injection("controller", 2, "GENERATING", "phase GENERATING"),
    Injection("controller", 2, "FILTERING", "phase FILTERING"),
    Injection("nats", 2, "FINE_TUNING", "down 3 s, same port and store"),
    Injection("controller", 2, "FINE_TUNING", "phase FINE_TUNING, job running"),
    Injection("trainer", 2, "FINE_TUNING", "mid-job, after the controller restart"),
    Injection("evaluator", 3, "EVALUATING", "mid-candidate"),
    Injection("generator", 3, "EVALUATING", "between requests"),
    Injection("novelty", 3, "FILTERING", "mid-admit"),
    Injection("nats", 3, "FINE_TUNING", "down 3 s during the fine-tune"),
]


class Stack:
    """nats-server and the five services on fixed ports; each can be killed and started again."""

    def __init__(self, tmp: Path, corpus_dir: Path, replay_dir: Path, pace_seconds: float = 0.5) -> None:
        self.tmp = tmp
        self.ports = {
            n: _free_port() for n in ("nats", "novelty", "evaluator", "generator", "trainer", "controller")
        }
        address = {n: f"127.0.0.1:{p}" for n, p in self.ports.items()}
        self.args = {
            "novelty": ["--db-path", str(tmp / "novelty.sqlite3")],
            "evaluator": ["--work-dir", str(tmp / "jobs"), "--max-concurrent-evaluations", "2"],
            "generator": ["--backend", "replay", "--replay-dir", str(replay_dir), "--max-candidates", "4",
                          "--replay-seconds-per-candidate", str(pace_seconds)],
            "trainer": ["--state-dir", str(tmp / "trainer"), "--artifacts-dir", str(tmp / "artifacts"),
                        "--worker-threads", "1", "--checkpoint-every-steps", "2"],
            "controller": ["--state-dir", str(tmp / "controller"), "--corpus-dir", str(corpus_dir),
                           "--nats-url", f"nats://{address['nats']}", "--retry-budget-seconds", "300",
                           "--evaluator-refresh-seconds", "1",
                           *[a for n in ("generator", "evaluator", "novelty", "trainer")
                             for a in (f"--{n}-addr", address[n])]],
        }  # fmt: skip
        self.address = address
        self.procs: dict[str, ServiceProcess | NatsServerProcess] = {}
        self.seen: dict[str, set[tuple[int, float]]] = {}  # every process each component started
        self.starts = 0
        for name in ("nats", "novelty", "evaluator", "generator", "trainer", "controller"):
            self.start(name)

    def start(self, name: str) -> None:
        self.starts += 1
        log = self.tmp / "logs" / f"{name}.log"
        if name == "nats":
            proc = NatsServerProcess(self.tmp / "js", self.tmp / "nats-run", log, port=self.ports["nats"])
        else:
            proc = ServiceProcess(
                name, self.tmp / "run", log, [*self.args[name], "--port", str(self.ports[name])]
            )
        proc.wait_ready(180)
        self.procs[name] = proc
        self.seen.setdefault(name, set()).add((proc.proc.pid, proc.create_time))

    def sample(self) -> None:
        """Remember every descendant of every component (evaluator template and jobs, trainer workers)."""
        for name, proc in self.procs.items():
            try:
                children = psutil.Process(proc.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.seen[name].add((child.pid, child.create_time()))

    def alive(self, name: str) -> list[int]:
        left = []
        for pid, created in self.seen[name]:
            try:
                process = psutil.Process(pid)
                if abs(process.create_time() - created) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        return left

    def kill(self, name: str) -> int:
        """kill -9 the component's main process only; its children must die on their own. Returns how
        many of them were still alive 15 s later (orphans)."""
        self.sample()
        proc = self.procs[name].proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while self.alive(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(self.alive(name))

    def stop(self) -> None:
        self.sample()
        for name in reversed(list(self.procs)):
            self.procs[name].stop(20)

    def controller(self) -> controller_pb2_grpc.ControllerServiceStub:
        return controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(self.address["controller"]))

    def run_experiment(
        self, experiment_id: str, config: controller_pb2.ExperimentConfig, timeout_seconds: float
    ) -> controller_pb2.Experiment:
        """Start an experiment and wait until it is no longer pending or running."""
        self.controller().StartExperiment(
            controller_pb2.StartExperimentRequest(experiment_id=experiment_id, config=config), timeout=60
        )
        return self.wait_done(experiment_id, timeout_seconds)

    def wait_done(self, experiment_id: str, timeout_seconds: float) -> controller_pb2.Experiment:
        """The experiment once it is no longer pending or running (or as it is at the deadline)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            experiment = (
                self.controller()
                .GetExperiment(controller_pb2.GetExperimentRequest(experiment_id=experiment_id), timeout=30)
                .experiment
            )
            running = (controller_pb2.EXPERIMENT_STATE_RUNNING, controller_pb2.EXPERIMENT_STATE_PENDING)
            if experiment.state not in running or time.monotonic() > deadline:
                return experiment
            time.sleep(1)


def _where(stack: Stack, experiment_id: str) -> tuple[int, str, controller_pb2.Experiment | None]:
    """(cycle, phase, experiment): the phase from the ledger file itself (a read every few ms catches
    short phases), the rest from the controller; experiment None when the controller is down."""
    try:
        experiment = (
            stack.controller()
            .GetExperiment(controller_pb2.GetExperimentRequest(experiment_id=experiment_id), timeout=5)
            .experiment
        )
    except grpc.RpcError:
        return -1, "", None
    if experiment.state in (
        controller_pb2.EXPERIMENT_STATE_COMPLETED,
        controller_pb2.EXPERIMENT_STATE_FAILED,
    ):
        return CYCLES + 1, "DONE", experiment
    cycle, phase = _ledger_phase(stack)
    return cycle, phase, experiment


def _ledger_phase(stack: Stack) -> tuple[int, str]:
    path = stack.tmp / "controller" / "ledger.sqlite3"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            row = db.execute("SELECT cycle, phase FROM cycles ORDER BY cycle DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return 0, "PREPARING"
    if row is None:
        return 0, "PREPARING"
    # FINE_TUNED and COMPLETED: the cycle's fine-tune is over, the next cycle has not begun
    return row[0], row[1] if row[1] in ORDER else "FINE_TUNING"


def _due(injection: Injection, cycle: int, phase: str, experiment: controller_pb2.Experiment) -> bool:
    if cycle > injection.cycle:
        return True
    if cycle < injection.cycle or ORDER.index(phase) < ORDER.index(injection.phase):
        return False
    if injection.component in ("trainer", "controller") and injection.phase == "FINE_TUNING":
        # mid-job: once the job has taken a step
        return phase != "FINE_TUNING" or experiment.fine_tune.step > 0
    if injection.component == "evaluator" and phase == "EVALUATING":
        return experiment.candidates_evaluated < experiment.candidates_generated
    return True


def _markdown(schedule: list[Injection], seconds: float) -> str:
    rows = [
        "| # | component | aimed at (cycle, point) | met (cycle / phase) | back after | orphans |",
        "|---|---|---|---|---|---|",
    ]
    for i, inj in enumerate(schedule, 1):
        rows.append(
            f"| {i} | {inj.component} | {inj.cycle}, {inj.note} | {inj.observed} | "
            f"{inj.restart_seconds:.1f} s | {inj.orphans_left} |"
        )
    rows.append(f"\n{len(schedule)} injections; the run took {seconds:.0f} s.")
    return "\n".join(rows)


def test_kill_9_of_every_component_loses_doubles_and_leaves_nothing(
    tmp_path: Path, small_corpus: Path
) -> None:
    replay = tmp_path / "programs"
    write_family(replay, 10)
    stack = Stack(tmp_path, small_corpus, replay)
    experiment_id = "chaos"
    started = time.monotonic()
    schedule = [Injection(**{k: v for k, v in vars(i).items()}) for i in SCHEDULE]
    try:
        stack.controller().StartExperiment(
            controller_pb2.StartExperimentRequest(
                experiment_id=experiment_id, config=experiment_config.from_mapping(CONFIG)
            ),
            timeout=60,
        )
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            cycle, phase, experiment = _where(stack, experiment_id)
            if phase == "DONE":
                break
            pending = [i for i in schedule if not i.done]
            if not pending or not _due(pending[0], cycle, phase, experiment or controller_pb2.Experiment()):
                stack.sample()
            if experiment is not None and pending and _due(pending[0], cycle, phase, experiment):
                injection = pending[0]
                injection.observed = f"{cycle} / {phase}" + (
                    f" (step {experiment.fine_tune.step})" if phase == "FINE_TUNING" else ""
                )
                injection.orphans_left = stack.kill(injection.component)
                back = time.monotonic()
                if injection.component == "nats":
                    time.sleep(3)
                stack.start(injection.component)
                injection.restart_seconds = time.monotonic() - back
                injection.done = True
            time.sleep(0.005)
        seconds = time.monotonic() - started
        table = _markdown(schedule, seconds)
        print("\n" + table)
        if os.environ.get("ARCHLOOP_FAULT_TABLE"):
            Path(os.environ["ARCHLOOP_FAULT_TABLE"]).write_text(table + "\n")

        cycle, phase, experiment = _where(stack, experiment_id)
        assert experiment is not None and experiment.state == controller_pb2.EXPERIMENT_STATE_COMPLETED, (
            experiment
        )
        assert all(i.done for i in schedule), [i for i in schedule if not i.done]
        assert len(schedule) >= 12 and all(i.orphans_left == 0 for i in schedule), table
        _check_invariants(stack, experiment_id, small_corpus)
    finally:
        stack.stop()
    left = {name: stack.alive(name) for name in stack.seen}
    assert not any(left.values()), f"processes outlived the stack: {left}"


def _check_invariants(stack: Stack, experiment_id: str, corpus_dir: Path) -> None:
    ledger = Ledger(stack.tmp / "controller" / "ledger.sqlite3")
    candidates = ledger.candidates(experiment_id)
    assert sorted((c.cycle, c.idx) for c in candidates) == [
        (cycle, i) for cycle in range(1, CYCLES + 1) for i in range(PER_CYCLE)
    ]
    # evaluated, or rejected by the novelty pre-check without training
    assert all(c.stage == "decided" and (c.eval_status or c.decided_before_training) for c in candidates)
    assert {c.decision for c in candidates} <= {"admitted", "rejected", "invalid"}
    admitted = [c for c in candidates if c.decision == "admitted"]
    valid = [c for c in candidates if c.valid]
    assert admitted, "nothing was admitted: the admit path was not exercised"
    assert any(not c.valid for c in candidates) and len(valid) > len(admitted)
    assert len({c.code for c in admitted}) == len(admitted), "a program was admitted twice"

    novelty = novelty_pb2_grpc.NoveltyServiceStub(grpc.insecure_channel(stack.address["novelty"]))
    counts = {
        c.name: c.entry_count
        for c in novelty.ListCollections(novelty_pb2.ListCollectionsRequest(), timeout=30).collections
    }
    lemur = len({json.loads(line)["model"] for line in (corpus_dir / "examples.jsonl").open()})
    assert counts[f"{experiment_id}-corpus"] == lemur + len(admitted)
    for c in valid:
        request = novelty_pb2.GetEntryRequest(collection=f"{experiment_id}-corpus", entry_id=c.candidate_id)
        if c.decision == "admitted":
            novelty.GetEntry(request, timeout=30)
        else:
            with pytest.raises(grpc.RpcError) as caught:
                novelty.GetEntry(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for cycle in range(1, CYCLES + 1):
        assert counts[f"{experiment_id}-c{cycle}"] == sum(c.cycle == cycle for c in valid)

    events = asyncio.run(_nats_events(f"nats://{stack.address['nats']}", experiment_id))
    expected = ["experiment_started"] + CYCLE_EVENTS * CYCLES + ["experiment_completed"]
    assert [e.WhichOneof("payload") for e in events] == expected
    assert len({e.event_id for e in events}) == len(events)

    check_one_job_per_cycle(stack.address["trainer"], experiment_id, CYCLES)
