"""The pre-warmed template process: torch imported and datasets loaded once, one fork per job.

Started by sandbox.Sandbox as `python -m services.evaluator.template`. Speaks JSON lines: it
reads jobs on stdin and answers on stdout with {"key": "hello", "namespaces": bool} once, then per
job {"key", "pid"} when forked and {"key", "exit_code", "signal"} when the child has ended. The
child isolates itself (sandbox._enter_sandbox) before the candidate runs (runner.run_job).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
_write_lock = threading.Lock()
_jobs_lock = threading.Lock()  # held from fork to registration, so the reaper never sees an unknown job
_jobs: dict[int, str] = {}  # pid → job key


def _say(message: dict) -> None:
    with _write_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def _report_exit(key: str, status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    _say({"key": key, "exit_code": code if code >= 0 else None, "signal": -code if code < 0 else None})


def _reaper() -> None:
    """Reap every child: the jobs' and, as a subreaper, the orphans their descendants leave."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)
            continue
        with _jobs_lock:
            key = _jobs.pop(pid, None)
        if key is not None:  # None: an orphan of some job, reaped and forgotten
            _report_exit(key, status)


def _load(spec: dict, cache: dict):
    from services.evaluator.datasets import load_digits, load_torchvision

    key = json.dumps(spec, sort_keys=True)
    if key not in cache:
        if spec["name"] == "digits":
            cache[key] = load_digits(spec["validation_fraction"], spec["seed"], spec["max_train_images"])
        else:
            cache[key] = load_torchvision(
                spec["name"], Path(spec["data_dir"]), spec["allow_download"], spec["validation_fraction"],
                spec["seed"], spec["max_train_images"],
            )  # fmt: skip
    return cache[key]


def _warm_up() -> None:
    """Import what a child may need but could not read after dropping privileges (the Python
    installation may live under root's home): every module the policy allows, and whatever torch
    imports lazily on a first forward, backward and optimizer step."""
    import encodings.idna  # noqa: F401 - socket calls need it (and must then fail for want of a network)
    import importlib

    import torch

    from services.evaluator.screen import default_policy

    for module in sorted(default_policy().allowed_imports):
        importlib.import_module(module)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(4, 2),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1]))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    torch.optim.Adam(model.parameters()).step()
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 8, 8))


def main() -> int:
    from archloop.processes import die_with_parent

    die_with_parent(signal.SIGKILL)
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the template, so forking stays safe
    import services.evaluator.runner  # noqa: F401 - imported once here; every child inherits it
    from services.evaluator.sandbox import namespaces_available

    _warm_up()

    namespaces = namespaces_available()
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    threading.Thread(target=_reaper, daemon=True, name="reaper").start()
    _say({"key": "hello", "namespaces": namespaces})
    cache: dict = {}
    for line in sys.stdin:
        job = json.loads(line)
        if "kill" in job or "cleanup" in job:
            _control(job)
            continue
        job_dir = Path(job["job_dir"])
        try:
            data = _load(job["dataset"], cache)
        except Exception as exc:
            (job_dir / "result.json").write_text(json.dumps({"setup_error": f"{type(exc).__name__}: {exc}"}))
            _say({"key": job["key"], "pid": -1})
            _say({"key": job["key"], "exit_code": 0, "signal": None})
            continue
        with _jobs_lock:
            pid = os.fork()
            if pid == 0:
                _run_child(job, job_dir, data, namespaces)
            _jobs[pid] = job["key"]
            _say({"key": job["key"], "pid": pid})
    return 0


def _control(message: dict) -> None:
    """The kills the service cannot do itself when the template runs in gVisor (its pids are not the
    host's): {"kill": key} ends that job's process group; {"cleanup": key, "uid": n} ends every process
    of the job's uid, then answers {"key": key, "cleaned": true}."""
    from services.evaluator.sandbox import kill_uid

    if "kill" in message:
        with _jobs_lock:
            pids = [pid for pid, key in _jobs.items() if key == message["kill"]]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return
    kill_uid(int(message["uid"]))
    _say({"key": message["cleanup"], "cleaned": True})


def _run_child(job: dict, job_dir: Path, data, namespaces: bool) -> None:
    """The forked child: isolate, run the candidate, report; never returns."""
    from services.evaluator.runner import run_job
    from services.evaluator.sandbox import SandboxLimits, _enter_sandbox

    job_pid = os.getpid()
    _enter_sandbox(job_dir, job["uid"], SandboxLimits(**job["limits"]), job["cpu_seconds"], namespaces)
    # fresh stream objects: a lock held by another template thread at fork time stays held here
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    result = run_job(Path("."), data)  # the job directory is the working directory now
    if os.getpid() != job_pid:
        os._exit(0)  # a process the candidate forked came back here: only the job itself reports
    Path("result.json.tmp").write_text(json.dumps(result))
    Path("result.json.tmp").replace("result.json")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
