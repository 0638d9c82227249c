"""The local supervisor brings dead components back: a real `archloop run` (the CLI, the stack it brings up,
the embedded model) with each of the six components killed once (kill -9), or stopped once (SIGSTOP: alive,
silent; the liveness check kills it), completes with nothing lost; one that keeps dying fails the
experiment with one sentence naming it, its exit and its log.

The kills are aimed at phases of the run through the controller (the address in the stack's
stack.json); after each kill the test waits until the supervisor has the component back (a new pid in
stack.json) before the next, so every kill meets a running stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
import yaml
from test_system import CYCLE_EVENTS, TEST_CONFIG, _nats_events

from archloop import paths
from archloop.v1 import controller_pb2, controller_pb2_grpc
from services.controller.ledger import Ledger
from services.controller.states import short_name
from services.trainer.jobs import JobStore
from tools.localstack import NatsServerProcess, StackState

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system

PHASES = ["PREPARING", "GENERATING", "EVALUATING", "FILTERING", "FINE_TUNING", "COMPLETED"]
KILLS = [  # (component, cycle, phase): kill at the first sight of this point or later
    ("novelty", 1, "GENERATING"),
    ("generator", 1, "GENERATING"),
    ("evaluator", 1, "EVALUATING"),
    ("nats", 1, "FILTERING"),
    ("trainer", 1, "FINE_TUNING"),
    ("controller", 2, "GENERATING"),
]
STOPS = [  # the same components and phases, a cycle apart where a stop could outlast the rest of the run
    ("novelty", 1, "GENERATING"),
    ("generator", 1, "GENERATING"),
    ("evaluator", 1, "EVALUATING"),
    ("nats", 2, "FILTERING"),
    ("trainer", 2, "FINE_TUNING"),
    ("controller", 3, "GENERATING"),
]


class Run:
    """`archloop run --config …` as a child process in its own home, its output collected."""

    def __init__(
        self,
        tmp_path: Path,
        corpus: Path,
        name: str,
        extra_env: dict[str, str] | None = None,
        config_overrides: dict | None = None,
    ):
        self.home = tmp_path / "home"
        shutil.copytree(corpus, paths.corpus_dir(home=self.home))  # no manifest: not bound to a model
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({**TEST_CONFIG, **(config_overrides or {})}))
        self.name = name
        self.log = tmp_path / "run.log"
        env = {**os.environ, "ARCHLOOP_HOME": str(self.home), **(extra_env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tools.cli", "run", "--config", str(config), "--name", name,
                 "--out", str(tmp_path / "report")],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.seen: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def watch_live_updates(self, timeout: float = 300) -> threading.Thread:
        """Open the dashboard's live-update stream of this run, as the experiment page in a browser does,
        and keep reading it on a thread until the run's end closes it (what it read: `self.streamed`)."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"dashboard: (http://\S+)", self.output())):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.output()
            time.sleep(0.2)
        self.streamed: list[bytes] = []

        def read() -> None:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{found[1]}/events", timeout=600) as r:
                for line in r:
                    self.streamed.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        return reader

    def state(self) -> StackState | None:
        state = StackState.load(self.home)
        if state is not None:
            self.seen.update(c.pid for c in state.components)
        return state

    def pid(self, component: str) -> int | None:
        state = self.state()
        return next((c.pid for c in state.components if c.name == component), None) if state else None

    def where(self) -> tuple[int, str]:
        """(cycle, phase) of the experiment, (0, '') while the controller cannot say."""
        state = self.state()
        if state is None:
            return 0, ""
        stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(state.address("controller")))
        try:
            e = stub.GetExperiment(controller_pb2.GetExperimentRequest(experiment_id=self.name), timeout=5)
        except grpc.RpcError:
            return 0, ""
        return e.experiment.current_cycle, short_name(controller_pb2.CyclePhase, e.experiment.current_phase)

    def wait_until_back(self, component: str, old_pid: int, timeout: float = 180) -> int:
        """Wait until the supervisor has `component` running under a new pid; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(component)
            if pid is not None and pid != old_pid and psutil.pid_exists(pid):
                return pid
            assert self.proc.poll() is None, self.output()
            time.sleep(0.2)
        raise AssertionError(f"{component} did not come back within {timeout} s:\n{self.output()}")

    def wait_for_stack(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.pid("controller") is None:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.output()
            time.sleep(0.2)

    def left_running(self) -> list[int]:
        deadline = time.monotonic() + 20
        alive = list(self.seen)
        while alive and time.monotonic() < deadline:
            alive = [p for p in self.seen if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
            time.sleep(0.2)
        return alive


def _reached(cycle: int, phase: str, at: tuple[int, str]) -> bool:
    now_cycle, now_phase = at
    if now_cycle != cycle:
        return now_cycle > cycle
    return now_phase in PHASES and PHASES.index(now_phase) >= PHASES.index(phase)


def _disrupt_each_component(run: Run, signum: int, schedule: list[tuple[str, int, str]]) -> list:
    """Send `signum` to each component at its point of the run, waiting for it to come back each time;
    then wait for the run to end. The points each disruption met."""
    met = []
    try:
        run.wait_for_stack()
        for component, cycle, phase in schedule:
            deadline = time.monotonic() + 600
            while not _reached(cycle, phase, at := run.where()):
                assert time.monotonic() < deadline and run.proc.poll() is None, run.output()
                time.sleep(0.05)
            pid = run.pid(component)
            assert pid is not None
            os.kill(pid, signum)
            met.append((component, at))
            run.wait_until_back(component, pid)
        assert run.proc.wait(timeout=900) == 0, run.output()
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)
            run.proc.wait(timeout=120)
    print(run.output(), "\nmet:", met)
    return met


def _check_nothing_lost(run: Run, tmp_path: Path, cycles: int = TEST_CONFIG["cycles"]) -> None:
    assert not run.left_running(), "processes outlived the run"
    per_cycle = TEST_CONFIG["candidates_per_cycle"]
    ledger = Ledger(run.home / "data" / "controller" / "ledger.sqlite3")
    assert ledger.experiment_of(run.name).state == "COMPLETED"
    candidates = ledger.candidates(run.name)
    assert sorted((c.cycle, c.idx) for c in candidates) == [
        (cycle, i) for cycle in range(1, cycles + 1) for i in range(per_cycle)
    ]
    # evaluated, or rejected by the novelty pre-check without training
    assert all(c.stage == "decided" and (c.eval_status or c.decided_before_training) for c in candidates)
    jobs = JobStore(run.home / "data" / "trainer" / "trainer.sqlite3").jobs(run.name)
    assert sorted((j.job_id, j.state) for j in jobs) == [
        (f"{run.name}-c{c}", "SUCCEEDED") for c in range(1, cycles + 1)
    ]
    # every event reached JetStream once and in order: read them from the stack's own store
    nats = NatsServerProcess(run.home / "nats", tmp_path / "nats-run", tmp_path / "nats.log")
    try:
        events = asyncio.run(_nats_events(nats.wait_ready(), run.name))
    finally:
        nats.stop(5)
    expected = ["experiment_started"] + CYCLE_EVENTS * cycles + ["experiment_completed"]
    assert [e.WhichOneof("payload") for e in events] == expected
    assert len({e.event_id for e in events}) == len(events)


def test_each_component_killed_once_during_archloop_run_loses_nothing(
    tmp_path: Path, small_corpus: Path
) -> None:
    run = Run(tmp_path, small_corpus, "comeback")
    _disrupt_each_component(run, signal.SIGKILL, KILLS)
    output = run.output()
    for component, _cycle, _phase in KILLS:
        assert f"{component} died (killed by SIGKILL); restarting it" in output, component
        assert f"{component} is back on" in output, component
    _check_nothing_lost(run, tmp_path)


def test_each_component_stopped_once_during_archloop_run_is_restarted_and_loses_nothing(
    tmp_path: Path, small_corpus: Path
) -> None:
    """SIGSTOP: the process stays, answers nothing and never exits. The supervisor's liveness check
    (tools.supervision.Liveness, its deadline 5 s here) kills it, and it comes back like a dead one.
    Each stop costs the run that deadline, so the stops are spread over 4 cycles (else the run ends
    before the last one)."""
    run = Run(tmp_path, small_corpus, "frozen", {"ARCHLOOP_LIVENESS_SECONDS": "5"}, {"cycles": 4})
    _disrupt_each_component(run, signal.SIGSTOP, STOPS)
    output = " ".join(run.output().split())  # rich wraps long lines
    for component, _cycle, _phase in STOPS:
        assert f"{component} has not answered its health check for" in output, component
        assert f"{component} died (killed by SIGKILL); restarting it" in output, component
        assert f"{component} is back on" in output, component
    _check_nothing_lost(run, tmp_path, cycles=4)


def test_a_component_that_keeps_dying_fails_the_run_with_one_sentence(
    tmp_path: Path, small_corpus: Path
) -> None:
    run = Run(tmp_path, small_corpus, "doomed", {"ARCHLOOP_STACK_MAX_RESTARTS": "2"})
    try:
        run.wait_for_stack()
        pid = run.pid("evaluator")
        for kill in range(3):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            if kill < 2:
                pid = run.wait_until_back("evaluator", pid)
        assert run.proc.wait(timeout=300) == 1, run.output()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    output = " ".join(run.output().split())  # rich wraps long lines
    log = run.home / "logs" / "evaluator.log"
    sentence = (
        f"the evaluator died 3 times within 300 s (last: killed by SIGKILL), so the supervisor gave up on "
        f"it; its log: {log}"
    )
    assert f"archloop run: doomed FAILED: {sentence}" in output, output
    assert "archloop run --resume doomed" in output
    ledger = Ledger(run.home / "data" / "controller" / "ledger.sqlite3")
    row = ledger.experiment_of("doomed")
    assert (row.state, row.error) == ("FAILED", sentence)
    assert [e.WhichOneof("payload") for e in ledger.events("doomed")][-1] == "experiment_failed"
    assert not run.left_running(), "processes outlived the run"
    assert not (run.home / "stack.json").exists()


def test_archloop_run_samples_with_the_base_model_its_config_names(
    tmp_path: Path, small_corpus: Path
) -> None:
    """The stack `archloop run` brings up serves the experiment's base model (another model folder
    here), so its candidates are sampled by the model its adapters are trained on."""
    import json

    from archloop.basemodel import TINY_MODEL_DIR

    other = tmp_path / "other-model"
    shutil.copytree(TINY_MODEL_DIR, other)
    settings = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**settings, "archloop_copy": True}))  # another sha256
    run = Run(tmp_path, small_corpus, "own-model", config_overrides={"cycles": 1, "base_model": str(other)})
    assert run.proc.wait(timeout=900) == 0, run.output()
    ledger = Ledger(run.home / "data" / "controller" / "ledger.sqlite3")
    models = {json.loads(c.generation_json)["model_id"] for c in ledger.candidates("own-model")}
    assert models == {str(other)}
