"""`archloop up` / `status` / `down` against a real nats-server and the five real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tools.localstack import SERVICES, core_shares
from tools.testing import run_cli

pytestmark = pytest.mark.slow


def _start_up(home: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "ARCHLOOP_HOME": str(home)}
    up = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "up"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = run_cli("status", "--json", env=env)
        if status.returncode == 0:
            return up, json.loads(status.stdout)
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        time.sleep(0.5)
    up.kill()
    raise AssertionError("the stack did not become healthy within 120 s")


def _assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 20
    alive = pids
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes left behind: {alive}")


def test_up_status_down(tmp_path: Path) -> None:
    up, status = _start_up(tmp_path)
    env = {**os.environ, "ARCHLOOP_HOME": str(tmp_path)}
    names = [c["component"] for c in status["components"]]
    assert names == ["nats", *SERVICES]
    assert all(c["health"] == "SERVING" for c in status["components"])
    assert status["components"][0]["address"].startswith("nats://127.0.0.1:")
    assert (tmp_path / "stack.json").exists()
    pids = [c["pid"] for c in status["components"]] + [status["supervisor_pid"]]

    human = run_cli("status", env=env)
    assert human.returncode == 0 and "controller" in human.stdout

    second = run_cli("up", env=env, timeout=30)
    assert second.returncode == 1 and "already running" in second.stderr

    down = run_cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert up.wait(timeout=30) == 0
    _assert_all_gone(pids)
    assert not (tmp_path / "stack.json").exists()
    after = run_cli("status", "--json", env=env)
    assert after.returncode == 1 and json.loads(after.stdout)["running"] is False


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    up, status = _start_up(tmp_path)
    pids = [c["pid"] for c in status["components"]]
    up.send_signal(signal.SIGINT)
    assert up.wait(timeout=30) == 0
    assert "local stack stopped" in up.stdout.read()
    _assert_all_gone(pids)


def test_killed_supervisor_leaves_no_orphans(tmp_path: Path) -> None:
    up, status = _start_up(tmp_path)
    pids = [c["pid"] for c in status["components"]]
    up.send_signal(signal.SIGKILL)
    up.wait(timeout=10)
    _assert_all_gone(pids)
    env = {**os.environ, "ARCHLOOP_HOME": str(tmp_path)}
    assert run_cli("status", env=env).returncode == 1
    assert run_cli("down", env=env).returncode == 0  # cleans the stale state file
    assert not (tmp_path / "stack.json").exists()


def test_a_killed_service_comes_back_on_its_address(tmp_path: Path) -> None:
    up, status = _start_up(tmp_path)
    env = {**os.environ, "ARCHLOOP_HOME": str(tmp_path)}
    before = {c["component"]: c for c in status["components"]}
    os.kill(before["novelty"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        after = json.loads(run_cli("status", "--json", env=env).stdout)
        novelty = next(c for c in after["components"] if c["component"] == "novelty")
        if novelty["pid"] != before["novelty"]["pid"] and novelty["health"] == "SERVING":
            break
        time.sleep(0.5)
    assert novelty["address"] == before["novelty"]["address"], novelty
    assert novelty["pid"] != before["novelty"]["pid"] and novelty["health"] == "SERVING", novelty
    assert run_cli("down", env=env).returncode == 0
    assert up.wait(timeout=30) == 0
    assert "novelty died (killed by SIGKILL); restarting it" in " ".join(up.stdout.read().split())


def test_the_stack_gives_the_evaluator_a_slot_per_core_unless_told_otherwise() -> None:
    assert core_shares(2, {}) == {"evaluator": {"ARCHLOOP_MAX_CONCURRENT_EVALUATIONS": "2"}}
    assert core_shares(1, {}) == {"evaluator": {"ARCHLOOP_MAX_CONCURRENT_EVALUATIONS": "1"}}
    assert core_shares(2, {"ARCHLOOP_MAX_CONCURRENT_EVALUATIONS": "1"}) == {
        "evaluator": {}
    }  # the user's stands
