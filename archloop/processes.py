"""Child processes that die with their parent, arranged by the child itself: the one home of
PR_SET_PDEATHSIG (the local stack's services, the evaluator's template and sandboxed jobs, the
trainer's workers all use `parent_death_signal`).

A parent that runs gRPC threads must not start children with a `preexec_fn`: that makes Python fork()
(not vfork/posix_spawn), so gRPC's fork handlers run while its threads may be busy, which can kill the
child before it execs. Instead the parent passes its pid in ARCHLOOP_PARENT_PID and the child, first
thing, asks the kernel for a signal when its parent dies (PR_SET_PDEATHSIG) and exits if that parent
is already gone. A child that is not ours to edit (nats-server, runsc) is started through this module
as a launcher (`foreign_child_argv`): it arranges the same, then execs the command, and the setting
survives the exec.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "ARCHLOOP_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should die with this process."""
    return {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}


def parent_death_signal(signum: int, parent: int | None = None) -> bool:
    """Ask the kernel to send this process `signum` when its parent dies, even by kill -9. Returns
    False when the parent died before the request took effect (this process's parent is no longer
    `parent`, or, without one, has become init), so the caller can exit at once. The setting is
    cleared by setuid: call it after any change of user."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)
    return os.getppid() == parent if parent is not None else os.getppid() != 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In the child: get `signum` when the parent named in the environment dies (no-op without it)."""
    parent = os.environ.get(PARENT_PID_ENV)
    if parent and not parent_death_signal(signum, int(parent)):
        os._exit(1)


def foreign_child_argv(argv: list[str], signum: int = signal.SIGTERM) -> list[str]:
    """The command line that runs `argv` (a program that cannot call die_with_parent itself) so that it
    gets `signum` when this process dies; start it with env=child_env()."""
    return [sys.executable, "-m", "archloop.processes", str(int(signum)), *argv]


if __name__ == "__main__":  # the launcher of foreign_child_argv
    die_with_parent(signal.Signals(int(sys.argv[1])))
    os.execvp(sys.argv[2], sys.argv[2:])
