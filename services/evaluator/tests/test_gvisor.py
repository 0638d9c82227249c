"""The gvisor sandbox: refuses to start in one sentence without runsc (never a silent fallback), and with
runsc runs candidates inside gVisor with the same verdicts, deadlines and clean-up as the namespaces one.
The hostile corpus under both sandboxes is in test_hostile.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.evaluator.evaluation import Evaluator, Protocol
from services.evaluator.sandbox import Sandbox, SandboxUnavailable
from services.evaluator.tests.test_evaluation import GOOD, _sandbox_processes
from services.evaluator.watchdog import Deadlines
from tools.testing import require_tool

NO_RUNSC = {**os.environ, "PATH": "/nonexistent"}


def require_runsc() -> None:
    """gVisor needs runsc and root: a skip on a machine without them, a failure under CI."""
    require_tool("runsc", "gVisor needs runsc (apt-get install runsc; make install-dev does it) and root",
                 root=True)  # fmt: skip


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


@pytest.mark.slow
def test_candidates_run_inside_gvisor_with_the_same_verdicts(tmp_path: Path) -> None:
    require_runsc()
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


@pytest.mark.slow
def test_runsc_dies_with_a_killed_evaluator(start_service, tmp_path: Path) -> None:
    """runsc is started through archloop.processes' launcher (no preexec_fn in a process with gRPC threads);
    kill -9 of the service takes runsc and everything it started with it: the sandbox and the gofer
    (re-executed runsc, shown as `exe`), whatever their names, and every process of runsc's group."""
    import signal
    import time

    import psutil

    require_runsc()
    proc = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"), "--sandbox", "gvisor")
    under_service = psutil.Process(proc.proc.pid).children(recursive=True)
    runsc = [c for c in under_service if "runsc" in c.name()]
    assert runsc, "no runsc under the service"
    groups = {os.getpgid(p.pid) for p in runsc}
    in_groups = [p for p in psutil.process_iter() if _pgid(p) in groups]
    tracked = {p.pid: p for p in [*under_service, *in_groups] if p.pid != proc.proc.pid}
    assert len(tracked) > len(runsc), f"only runsc itself under the service: {under_service}"
    os.kill(proc.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while alive := [f"{p.pid} {p.name()}" for p in tracked.values() if _alive(p)]:
        assert time.monotonic() < deadline, f"still running after the evaluator was killed: {alive}"
        time.sleep(0.2)


def _pgid(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except ProcessLookupError:
        return None


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
