"""The supervisor's liveness rule (tools.supervision.Liveness) on a real process: one that runs but does
not answer (SIGSTOP) is killed at its deadline so that the supervisor restarts it; one that answers is
left alone; the deadline comes from the environment and a bad one is refused in one sentence."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

from tools.supervision import Liveness, StackError


@dataclass
class _Child:  # what Liveness reads of a supervised child: its name and its process
    name: str
    proc: subprocess.Popen


def test_a_stopped_process_is_killed_at_the_deadline_and_an_answering_one_is_not() -> None:
    stopped = _Child("generator", subprocess.Popen(["sleep", "60"], start_new_session=True))
    answering = _Child("novelty", subprocess.Popen(["sleep", "60"], start_new_session=True))
    os.kill(stopped.proc.pid, signal.SIGSTOP)
    status = {"generator": "UNREACHABLE", "novelty": "SERVING"}  # the health check's answers, faked
    heard: list[str] = []
    liveness = Liveness(deadline_seconds=0.6, interval_seconds=0.1, timeout_seconds=0.1)
    try:
        for child in (stopped, answering):
            liveness.answered(child.name)
        began = time.monotonic()
        while stopped.proc.poll() is None and time.monotonic() - began < 10:
            liveness.check([stopped, answering], lambda c, timeout: status[c.name], heard.append)
            time.sleep(0.05)
        assert stopped.proc.returncode == -signal.SIGKILL
        assert 0.6 <= time.monotonic() - began < 5
        assert answering.proc.poll() is None
        assert len(heard) == 1 and heard[0].startswith("generator has not answered its health check for")
        assert "(UNREACHABLE: stopped, hung or broken); killing it so that it restarts" in heard[0]
    finally:
        for child in (stopped, answering):
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()


def test_the_deadline_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ARCHLOOP_LIVENESS_SECONDS", "8")
    assert (Liveness.from_env().deadline_seconds, Liveness.from_env().interval_seconds) == (8, 2)
    monkeypatch.setenv("ARCHLOOP_LIVENESS_SECONDS", "0")
    off = Liveness.from_env()
    off.check([_Child("x", None)], lambda c, t: pytest.fail("checked while off"), print)  # type: ignore[arg-type]
    for bad in ("soon", "-1"):
        monkeypatch.setenv("ARCHLOOP_LIVENESS_SECONDS", bad)
        with pytest.raises(StackError, match="ARCHLOOP_LIVENESS_SECONDS"):
            Liveness.from_env()
