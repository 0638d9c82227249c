"""The gvisor sandbox: refuses to start in one sentence without runsc (never a silent fallback), and with
runsc runs candidates inside gVisor with the same verdicts, deadlines and clean-up as the namespaces one.
The hostile corpus under both sandboxes is in test_hostile.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.evaluator.evaluation import Evaluator, Protocol
from services.evaluator.sandbox import Sandbox, SandboxUnavailable
from services.evaluator.tests.test_evaluation import GOOD, _sandbox_processes
from services.evaluator.watchdog import Deadlines

NO_RUNSC = {**os.environ, "PATH": "/nonexistent"}
NEEDS_RUNSC = pytest.mark.skipif(
    shutil.which("runsc") is None or os.geteuid() != 0,
    reason="gVisor needs runsc (apt-get install runsc; make install does it) and root",
)


def test_without_runsc_the_service_and_the_cli_say_so_and_exit_2(tmp_path: Path) -> None:
    service = subprocess.run(
        [sys.executable, "-m", "services.evaluator", "--port", "0", "--sandbox", "gvisor",
         "--work-dir", str(tmp_path / "jobs")],
        env=NO_RUNSC, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert service.returncode == 2, service.stderr
    assert "--sandbox/ARCHLOOP_SANDBOX: the gvisor sandbox needs runsc (gVisor) on PATH" in service.stderr
    program = tmp_path / "model.py"
    program.write_text(GOOD)
    cli = subprocess.run(
        [sys.executable, "-m", "tools.cli", "evaluate", str(program), "--sandbox", "gvisor",
         "--work-dir", str(tmp_path / "cli-jobs")],
        env=NO_RUNSC, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert cli.returncode == 2 and "needs runsc" in cli.stderr, cli.stderr
    with pytest.raises(ValueError, match="is not one of namespaces, gvisor"):
        Sandbox(tmp_path / "x", kind="docker")


@NEEDS_RUNSC
@pytest.mark.slow
def test_candidates_run_inside_gvisor_with_the_same_verdicts(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "jobs", kind="gvisor")
    try:
        sandbox.start()
    except SandboxUnavailable as exc:
        pytest.fail(f"runsc is installed but did not start: {exc}")
    try:
        evaluator = Evaluator(sandbox, tmp_path, deadlines=Deadlines(4, 4, 4, 4, 3))
        good = evaluator.evaluate("good", GOOD, Protocol(epochs=2, learning_rate=0.05))
        assert good.status == "OK" and good.accuracy > 0.2, good.stages
        assert good.network_isolation == "gvisor"
        spin = GOOD.replace("return self.body(x)", "while True:\n            pass")
        hung = evaluator.evaluate("spin", spin, Protocol(time_limit_seconds=60))
        assert (hung.status, hung.stages[-1].stage) == ("STAGE_TIMEOUT", "forward"), hung.stages[-1]
        slow = evaluator.evaluate("slow", spin, Protocol(time_limit_seconds=3))  # the time limit first
        assert slow.status == "TIMEOUT", slow.stages[-1]
        assert list((tmp_path / "jobs").iterdir()) == []
    finally:
        sandbox.stop()
    assert not _sandbox_processes()


@NEEDS_RUNSC
@pytest.mark.slow
def test_runsc_dies_with_a_killed_evaluator(start_service, tmp_path: Path) -> None:
    """runsc is started through archloop.processes' launcher (no preexec_fn in a process with gRPC threads);
    kill -9 of the service takes runsc and its attached sandbox with it."""
    import signal
    import time

    import psutil

    proc = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"), "--sandbox", "gvisor")
    runsc = [c for c in psutil.Process(proc.proc.pid).children(recursive=True) if "runsc" in c.name()]
    assert runsc, "no runsc under the service"
    os.kill(proc.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in runsc):
        assert time.monotonic() < deadline, [p.pid for p in runsc if p.is_running()]
        time.sleep(0.2)
