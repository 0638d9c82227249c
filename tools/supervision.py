"""What the local supervisor decides (tools.localstack.Stack.supervise): when a dead component comes back
(`RestartPolicy`), when to give up on one (`StackFailure`), and when a component that still runs counts as
dead (`Liveness`: it stopped answering its health check; a stopped or deadlocked process never exits)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from archloop.clients import backoff_delays


class StackError(RuntimeError):
    """The stack could not start or a component failed; the message says which and why."""


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor brings a dead component back: after `first_delay_seconds`, doubling up to
    `max_delay_seconds` while it keeps dying (archloop.clients.backoff_delays); a component that dies
    more than `max_restarts` times within `window_seconds` is given up on. Environment:
    ARCHLOOP_STACK_MAX_RESTARTS, ARCHLOOP_STACK_RESTART_WINDOW_SECONDS."""

    max_restarts: int = 5
    window_seconds: float = 300.0
    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 10.0

    @classmethod
    def from_env(cls, max_restarts: int | None = None) -> RestartPolicy:
        """The defaults, overridden by the environment, then by `max_restarts` (a CLI flag)."""
        try:
            env_max = int(os.environ.get("ARCHLOOP_STACK_MAX_RESTARTS", cls.max_restarts))
            window = float(os.environ.get("ARCHLOOP_STACK_RESTART_WINDOW_SECONDS", cls.window_seconds))
        except ValueError as exc:
            raise StackError(f"ARCHLOOP_STACK_MAX_RESTARTS / _RESTART_WINDOW_SECONDS: {exc}") from None
        chosen = env_max if max_restarts is None else max_restarts
        if chosen < 0 or window <= 0:
            raise StackError("the restart limit must be ≥ 0 and its window > 0 seconds")
        return cls(max_restarts=chosen, window_seconds=window)

    def delay(self, deaths: int) -> float:
        """The wait before restart number `deaths` (1-based) within the window."""
        delays = backoff_delays(self.first_delay_seconds, self.max_delay_seconds)
        return next(itertools.islice(delays, deaths - 1, None))


@dataclass(frozen=True)
class StackFailure:
    """A component that kept dying: why the supervisor gave up."""

    component: str
    exit: str
    log: str
    deaths: int
    window_seconds: float

    @property
    def sentence(self) -> str:
        return (
            f"the {self.component} died {self.deaths} times within {self.window_seconds:g} s "
            f"(last: {self.exit}), so the supervisor gave up on it; its log: {self.log}"
        )


@dataclass
class Liveness:
    """A component whose process runs but whose health check (gRPC health for a service, /healthz for
    nats-server) has not answered SERVING for `deadline_seconds` is killed (its process group, SIGKILL),
    so the supervisor restarts it like a dead one: a SIGSTOPped process, a deadlocked serving loop, an
    evaluator whose sandbox template cannot come back. Checked every `interval_seconds`, each check
    waiting at most `timeout_seconds`. Environment: ARCHLOOP_LIVENESS_SECONDS (the deadline; 0 = off)."""

    deadline_seconds: float = 60.0
    interval_seconds: float = 5.0
    timeout_seconds: float = 3.0
    last_live: dict[str, float] = field(default_factory=dict)
    next_check: float = 0.0

    @classmethod
    def from_env(cls) -> Liveness:
        try:
            deadline = float(os.environ.get("ARCHLOOP_LIVENESS_SECONDS", cls.deadline_seconds))
        except ValueError as exc:
            raise StackError(f"ARCHLOOP_LIVENESS_SECONDS: {exc}") from None
        if deadline < 0:
            raise StackError("ARCHLOOP_LIVENESS_SECONDS must be ≥ 0 (0 = no liveness checks)")
        interval = min(cls.interval_seconds, max(deadline / 4, 0.5))
        return cls(deadline, interval, min(cls.timeout_seconds, max(deadline / 3, 0.5)))

    def answered(self, name: str) -> None:
        """`name` is live now (it started, or came back)."""
        self.last_live[name] = time.monotonic()

    def check(self, children: Iterable, status_of: Callable[[Any, float], str], on_event) -> None:
        """Ask every running child (at most once per interval); kill those past the deadline."""
        now = time.monotonic()
        if not self.deadline_seconds or now < self.next_check:
            return
        self.next_check = now + self.interval_seconds
        for child in children:
            if child.proc.poll() is not None:
                continue
            status = status_of(child, self.timeout_seconds)
            now = time.monotonic()
            if status == "SERVING":
                self.last_live[child.name] = now
                continue
            silent = now - self.last_live.setdefault(child.name, now)
            if silent < self.deadline_seconds:
                continue
            on_event(
                f"{child.name} has not answered its health check for {silent:.0f} s ({status}: stopped, hung "
                f"or broken); killing it so that it restarts"
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                child.proc.wait(10)
