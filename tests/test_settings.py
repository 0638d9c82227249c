"""Settings: flags beat ARCHLOOP_* variables beat defaults; bad values fail fast naming the source."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from archloop.settings import SettingsError, load_settings
from services.controller.settings import ControllerSettings
from services.novelty.settings import NoveltySettings


def test_flag_beats_env_beats_default() -> None:
    assert load_settings(NoveltySettings, [], {}).port == 50054
    assert load_settings(NoveltySettings, [], {"ARCHLOOP_PORT": "6000"}).port == 6000
    assert load_settings(NoveltySettings, ["--port", "7000"], {"ARCHLOOP_PORT": "6000"}).port == 7000
    settings = load_settings(NoveltySettings, ["--grace-period-seconds", "2.5"], {})
    assert settings.grace_period_seconds == 2.5


def test_settings_are_frozen() -> None:
    settings = load_settings(NoveltySettings, [], {})
    with pytest.raises(AttributeError):
        settings.port = 1


@pytest.mark.parametrize(
    ("argv", "env", "named", "problem"),
    [
        (["--port", "70000"], {}, "--port", "not a TCP port"),
        ([], {"ARCHLOOP_PORT": "abc"}, "ARCHLOOP_PORT", "not an integer"),
        ([], {"ARCHLOOP_LOG_LEVEL": "loud"}, "ARCHLOOP_LOG_LEVEL", "not one of"),
        (
            [],
            {"ARCHLOOP_GRACE_PERIOD_SECONDS": "-1"},
            "ARCHLOOP_GRACE_PERIOD_SECONDS",
            "must not be negative",
        ),
    ],
)
def test_bad_values_name_their_source(argv, env, named, problem) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(NoveltySettings, argv, env)
    assert str(info.value).startswith(named + ":")
    assert problem in str(info.value)


@pytest.mark.parametrize("url", ["http://localhost:4222", "nats://", "nats://host:notaport"])
def test_bad_nats_url_is_rejected(url: str) -> None:
    with pytest.raises(SettingsError, match="ARCHLOOP_NATS_URL"):
        load_settings(ControllerSettings, [], {"ARCHLOOP_NATS_URL": url})


def _run_service(
    name: str, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_port_exits_2_naming_the_variable() -> None:
    result = _run_service("novelty", env_extra={"ARCHLOOP_PORT": "99999"})
    assert result.returncode == 2
    assert "ARCHLOOP_PORT" in _one_error_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_busy_port_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_service("evaluator", "--port", str(port))
    assert result.returncode == 2
    assert "cannot listen on" in _one_error_line(result.stderr)


def test_unreachable_nats_fails_fast() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound but not listening: connections are refused
        started = time.monotonic()
        result = _run_service("controller", "--port", "0", "--nats-url", f"nats://127.0.0.1:{port}")
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "ARCHLOOP_NATS_URL" in line and "cannot reach NATS" in line
    assert time.monotonic() - started < 20
