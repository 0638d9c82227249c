"""The sandbox: every candidate runs in its own child forked from a pre-warmed template process.

    service process ──pipe──▶ template (torch imported, datasets cached) ──fork──▶ candidate child

The service never imports candidate code. The template is a separate process started once; for
each job it forks a child that, before touching the candidate:
- starts its own session (so its whole process group can be killed),
- enters new network and mount namespaces when the machine allows it (root or CAP_SYS_ADMIN):
  no network interface is up, so no connection succeeds, not even to loopback; /tmp, /var/tmp and
  /dev/shm become private empty tmpfs mounts, so nothing lands in the host's shared temp dirs,
- sets rlimits (address space, CPU seconds, file size, open files, processes, no core dumps),
- drops to a dedicated unprivileged uid when running as root (so the process limit bites and the
  only writable place is the job directory), with no_new_privs; each replica claims its uids with
  host-wide lock files, so replicas on one host never share one,
- scrubs the environment and sends stdin/stdout/stderr to /dev/null and files in the job directory.

The service enforces the wall-clock limit by killing the child's process group, and afterwards
kills every process left running under the job's uid (children that escaped the group with
setsid), then removes the job directory. Where namespaces are not available the job runs without
network isolation and the result says so (NETWORK_ISOLATION_NONE) instead of pretending.

`kind="gvisor"` runs the template, and so every candidate, inside gVisor (`runsc run`, an OCI bundle
written at start: the host's root read-only, a private /tmp, the work directory bound read-write, no
network, the ptrace platform by default): a user-space kernel between the candidate and the host, with
the same limits, statuses and clean-up inside it. Pids inside gVisor are not host pids, so the kills
(the job's group at its deadline, the job uid's leftovers after it) are the template's to do there.
Without runsc, or when it cannot start, `start()` raises SandboxUnavailable with one sentence: never
a silent fallback to namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from archloop.processes import child_env, foreign_child_argv, parent_death_signal
from services.evaluator.watchdog import Stop, Watchdog

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PRIVATE_TMP_MOUNTS = ("/tmp", "/var/tmp", "/dev/shm")
OUTPUT_TAIL_BYTES = 4096
EXIT_SETUP_FAILED = 120
UID_RANGE = 4096  # sandbox uids are uid_base .. uid_base + UID_RANGE - 1, shared by the host's replicas
SANDBOXES = ("namespaces", "gvisor")
GVISOR_CAPABILITIES = ["CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_FOWNER",
                       "CAP_DAC_OVERRIDE"]  # fmt: skip
"""What the template needs inside gVisor: namespaces and tmpfs mounts for each child, dropping to the
job's uid, killing it; none of them reaches the host."""


class TemplateDied(RuntimeError):
    """The template process ended (or its pipe closed) while a job needed it: nothing the candidate
    did. The caller restarts it (`Sandbox.restart`) and runs the job again."""


class SandboxUnavailable(RuntimeError):
    """The chosen sandbox cannot run here; the message says why in one sentence."""


@dataclass(frozen=True)
class SandboxLimits:
    address_space_bytes: int = 8 * 2**30  # torch needs ≥ 4 GiB of address space to import
    file_size_bytes: int = 64 * 2**20
    open_files: int = 256
    processes: int = 64
    extra_cpu_seconds: int = 5  # RLIMIT_CPU = time limit + this, a backstop to the wall clock
    threads: int = 1


@dataclass
class SandboxOutcome:
    """How the child ended; `result` is what it wrote to result.json (None if it never did)."""

    result: dict | None
    timed_out: bool
    exit_code: int | None
    signal_number: int | None
    stdout_tail: str
    stderr_tail: str
    network_isolation: str
    duration_seconds: float
    stopped: Stop | None = None
    """Set when the watchdog ended the job (a stage deadline, no progress, too slow)."""


PRIVATE_IN_GVISOR = ("/tmp", "/dev/shm")
"""Directories the gVisor sandbox replaces with empty tmpfs mounts."""


def _under_private_dirs(paths: list[str]) -> list[str]:
    """The top folders, under a PRIVATE_IN_GVISOR directory, of those of `paths` (made real) that lie
    there: a checkout or virtualenv in /tmp must be bound back in, read-only."""
    found = set()
    for path in filter(None, paths):
        real = os.path.realpath(path)
        for private in PRIVATE_IN_GVISOR:
            if real.startswith(private + "/"):
                found.add(os.path.join(private, real[len(private) + 1 :].split("/")[0]))
    return sorted(top for top in found if os.path.isdir(top))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _isolate_namespaces() -> bool:
    """New network and mount namespaces with private temp dirs; False when not permitted."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
        return False
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    for target in PRIVATE_TMP_MOUNTS:
        if (
            os.path.isdir(target)
            and libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, b"size=64m,mode=1777") != 0
        ):
            return False
    return True


def _enter_sandbox(
    job_dir: Path, uid: int | None, limits: SandboxLimits, cpu_seconds: int, isolate: bool
) -> None:
    """In the forked child, before any candidate code runs; afterwards the working directory is the
    job directory (use relative paths: its absolute path may be hidden by the private /tmp).
    Exits with EXIT_SETUP_FAILED on any failure."""
    try:
        os.setsid()
        job_fd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY)  # reachable even once /tmp is re-mounted
        if isolate and not _isolate_namespaces():
            os._exit(EXIT_SETUP_FAILED)
        for limit, value in (
            (resource.RLIMIT_AS, limits.address_space_bytes),
            (resource.RLIMIT_CPU, cpu_seconds),
            (resource.RLIMIT_FSIZE, limits.file_size_bytes),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_NPROC, limits.processes),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(limit, (value, value))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails instead of killing
        os.fchdir(job_fd)
        os.close(job_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, fd)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": ".", "TMPDIR": ".", "LANG": "C.UTF-8",
                           "OMP_NUM_THREADS": str(limits.threads)})  # fmt: skip
        _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        template = os.getppid()
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        # after setuid, which clears it: die with the template (and so with the service)
        if not parent_death_signal(signal.SIGKILL, template):
            os._exit(EXIT_SETUP_FAILED)
    except Exception:
        os._exit(EXIT_SETUP_FAILED)


def namespaces_available() -> bool:
    """Whether this machine lets a child enter new network and mount namespaces (checked once)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if _isolate_namespaces() else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _live_processes_of(uid: int) -> bool:
    for proc in psutil.process_iter(["uids", "status"]):
        uids, status = proc.info["uids"], proc.info["status"]
        if uids is not None and uid in (uids.real, uids.effective) and status != psutil.STATUS_ZOMBIE:
            return True
    return False


def kill_uid(uid: int, rounds: int = 50) -> None:
    """Kill every process of `uid`: a helper takes that uid and signals -1 (everything it may
    signal), until none is left (a fork bomb keeps forking between two rounds). kill(-1) reports
    success whenever any process exists, so the check is a look at /proc."""
    for _ in range(rounds):
        if not _live_processes_of(uid):
            return
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.01)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - OUTPUT_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return ("…" if size > OUTPUT_TAIL_BYTES else "") + text


class Sandbox:
    """The service side: owns the template process and the job directories."""

    def __init__(
        self,
        work_dir: Path,
        limits: SandboxLimits | None = None,
        uid_base: int = 61000,
        slots: int = 1,
        kind: str = "namespaces",
        runsc_platform: str = "ptrace",
    ) -> None:
        if kind not in SANDBOXES:
            raise ValueError(f"sandbox {kind!r} is not one of {', '.join(SANDBOXES)}")
        self.kind = kind
        self.runsc_platform = runsc_platform
        self._gvisor_dir: Path | None = None
        self.work_dir = work_dir
        self.limits = limits or SandboxLimits()
        self.is_root = os.geteuid() == 0
        self._uid_claims: list[int] = []  # open lock files: the uids are ours while they stay open
        self._free_uids = self._claim_uids(uid_base, slots) if self.is_root else []
        self._uid_lock = threading.Lock()
        self._lock = threading.Lock()
        self._events: dict[str, dict] = {}
        self._cond = threading.Condition(self._lock)
        self._restart_lock = threading.Lock()
        self.generation = 0  # how many times the template was (re)started; a job belongs to one
        self.template_restarts = 0
        self.stopped = False  # stop() was called: a dead template is not started again
        self.template: subprocess.Popen | None = None
        self.network_isolation = "none"

    def start(self, ready_timeout_seconds: float = 120.0) -> None:
        """Start the template (imports torch) and wait until it answers. SandboxUnavailable when the
        gvisor sandbox cannot run here."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work_dir, 0o711)
        with self._cond:
            self._events.clear()
            self.generation += 1
        template = [sys.executable, "-m", "services.evaluator.template"]
        if self.kind == "gvisor":
            self.template = subprocess.Popen(  # runsc dies with this process; its sandbox is attached to it
                foreign_child_argv(self._gvisor(template), signal.SIGKILL),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=child_env(),
            )  # fmt: skip
        else:
            self.template = subprocess.Popen(
                template,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
                env=child_env(),  # the template dies with this process (no preexec_fn: archloop.processes)
            )
        threading.Thread(
            target=self._read_template,
            args=(self.template, self.generation),
            daemon=True,
            name="sandbox-template",
        ).start()
        hello = self._wait_event("hello", ready_timeout_seconds)
        if hello is None:
            if self.kind == "gvisor":
                self.stop()
                raise SandboxUnavailable(
                    f"gVisor (runsc --platform={self.runsc_platform}) could not start the evaluator's "
                    "template; runsc's own messages are in this service's log"
                )
            raise RuntimeError("the evaluator's template process did not start")
        if self.kind == "gvisor":
            self.network_isolation = "gvisor"
        else:
            self.network_isolation = "namespace" if hello["namespaces"] else "none"

    def _gvisor(self, template: list[str]) -> list[str]:
        """The `runsc run` command line for the template, after writing its OCI bundle."""
        runsc = shutil.which("runsc")
        if runsc is None:
            raise SandboxUnavailable(
                "the gvisor sandbox needs runsc (gVisor) on PATH: install it (apt-get install runsc) "
                "or choose --sandbox namespaces"
            )
        if not self.is_root:
            raise SandboxUnavailable("the gvisor sandbox needs root here (runsc run without rootless setup)")
        self._gvisor_dir = Path(tempfile.mkdtemp(prefix="archloop-gvisor-"))
        bundle = self._gvisor_dir / "bundle"
        bundle.mkdir()
        work = str(self.work_dir.resolve())
        spec = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": template,
                "env": [
                    f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
                    "HOME=/tmp",
                    "PYTHONPATH=" + os.pathsep.join(p for p in sys.path if p),
                ],
                "cwd": os.getcwd(),
                "capabilities": {k: GVISOR_CAPABILITIES for k in ("bounding", "effective", "permitted")},
            },
            "root": {"path": "/", "readonly": True},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs"},
                # what the template itself runs from, when it lives under a private directory
                *(
                    {"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}
                    for d in _under_private_dirs([sys.prefix, sys.executable, os.getcwd(), *sys.path])
                ),
                {"destination": work, "type": "bind", "source": work, "options": ["rbind", "rw"]},
            ],
            "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
        }
        (bundle / "config.json").write_text(json.dumps(spec))
        return [runsc, "--root", str(self._gvisor_dir / "state"), "--network=none",
                f"--platform={self.runsc_platform}", "run", "--bundle", str(bundle),
                f"archloop-evaluator-{os.getpid()}-{id(self)}"]  # fmt: skip

    def stop(self) -> None:
        self.stopped = True
        self._end_template()
        for fd in self._uid_claims:
            os.close(fd)
        self._uid_claims.clear()

    def _end_template(self) -> None:
        if self.template is not None and self.template.poll() is None:
            self.template.kill()
            self.template.wait()
        if self._gvisor_dir is not None:
            shutil.rmtree(self._gvisor_dir, ignore_errors=True)
            self._gvisor_dir = None

    def alive(self) -> bool:
        """Whether the template process runs and its pipe is open (what the service's health says)."""
        with self._cond:
            ended = "__template_exit__" in self._events
        return self.template is not None and self.template.poll() is None and not ended

    def restart(self, dead_generation: int) -> None:
        """Start the template again after it died in `dead_generation` (once, whichever job of that
        generation asks first; the others find it restarted)."""
        with self._restart_lock:
            if self.stopped:
                raise SandboxUnavailable("the evaluator is stopping: its sandbox is not started again")
            if self.generation != dead_generation and self.alive():
                return
            self._end_template()
            self.template_restarts += 1
            self.start()

    def _read_template(self, template: subprocess.Popen, generation: int) -> None:
        assert template.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # a pipe closed under us is an end too
            for line in template.stdout:
                message = json.loads(line)
                with self._cond:
                    if generation == self.generation:
                        self._events.setdefault(message["key"], {}).update(message)
                        self._cond.notify_all()
        with self._cond:
            if generation == self.generation:
                self._events["__template_exit__"] = {}
                self._cond.notify_all()

    def _wait_event(self, key: str, timeout: float, field: str | None = None) -> dict | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                event = self._events.get(key)
                if event is not None and (field is None or field in event):
                    return event
                if "__template_exit__" in self._events:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _send(self, message: dict) -> None:
        assert self.template is not None and self.template.stdin is not None
        with self._lock:
            try:
                self.template.stdin.write(json.dumps(message) + "\n")
                self.template.stdin.flush()
            except (BrokenPipeError, ValueError) as exc:  # ValueError: the pipe was closed here
                self._events["__template_exit__"] = {}
                self._cond.notify_all()
                raise TemplateDied(f"the template's pipe is closed ({exc})") from None

    def run(
        self,
        job: dict,
        dataset: dict,
        time_limit_seconds: float,
        on_progress: Callable[[dict], None] | None = None,
        cancel: threading.Event | None = None,
        watchdog: Watchdog | None = None,
    ) -> SandboxOutcome:
        """Run one job to its verdict within the time limit; always cleans up after itself. Setting
        `cancel` (the caller went away) ends the job as if its time were up; `watchdog` (its clock
        starts at the fork) may end it earlier, at a stage deadline."""
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self.work_dir))
        uid = self._take_uid()
        started = time.monotonic()
        generation = self.generation
        key = job_dir.name
        try:
            forked = self._fork(job_dir, job, dataset, uid, time_limit_seconds, generation)
            if watchdog is not None:  # its clock starts at the fork
                watchdog.step_since = time.monotonic()
            try:
                exited, timed_out, stopped = self._await_exit(
                    key, job_dir, started + time_limit_seconds, on_progress, cancel or threading.Event(),
                    watchdog, generation,
                )  # fmt: skip
            except TemplateDied:
                self._kill_job(key, forked["pid"])
                raise
            if timed_out and forked["pid"] > 0:
                self._kill_job(key, forked["pid"])
                exited = self._wait_event(key, 10.0, "exit_code")
            result = None if timed_out else _read_result(job_dir / "result.json")
            return SandboxOutcome(
                result=result,
                timed_out=timed_out,
                exit_code=(exited or {}).get("exit_code"),
                signal_number=(exited or {}).get("signal"),
                stdout_tail=_tail(job_dir / "stdout.txt"),
                stderr_tail=_tail(job_dir / "stderr.txt"),
                network_isolation=self.network_isolation,
                duration_seconds=time.monotonic() - started,
                stopped=stopped,
            )
        finally:
            self._clean_up(job_dir, uid)

    def _fork(
        self,
        job_dir: Path,
        job: dict,
        dataset: dict,
        uid: int | None,
        time_limit_seconds: float,
        generation: int,
    ) -> dict:
        """Hand the job to the template; its fork event ({"pid": …}). TemplateDied when the template is
        gone (before or while it forks)."""
        if not self.alive():
            raise TemplateDied("the template process is not running")
        (job_dir / "job.json").write_text(json.dumps(job))
        if uid is not None:
            os.chown(job_dir, uid, uid)
        cpu_seconds = int(time_limit_seconds) + self.limits.extra_cpu_seconds
        self._send(
            {"key": job_dir.name, "job_dir": str(job_dir), "dataset": dataset, "uid": uid,
             "limits": asdict(self.limits), "cpu_seconds": cpu_seconds}
        )  # fmt: skip
        forked = self._wait_event(job_dir.name, 60.0, "pid")
        if forked is None:
            if self._died(generation):
                raise TemplateDied("the template process ended before it forked the job")
            raise RuntimeError("the template process did not fork the job")
        return forked

    def _kill_job(self, key: str, pid: int) -> None:
        """End a job's process group: here, or inside gVisor (its pids are not the host's) by the
        template; a template that died took gVisor, and the job, with it."""
        if pid <= 0:
            return
        if self.kind == "gvisor":
            with contextlib.suppress(OSError, ValueError, TemplateDied):
                self._send({"kill": key})
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def _clean_up(self, job_dir: Path, uid: int | None) -> None:
        """Every process of the job's uid ended, the uid returned, the job's events and folder gone."""
        if uid is not None:
            if self.kind == "gvisor":  # a template that died took gVisor, and the job, with it
                with contextlib.suppress(OSError, ValueError, TemplateDied):
                    self._send({"cleanup": job_dir.name, "uid": uid})
                    self._wait_event(job_dir.name, 30.0, "cleaned")
            else:
                kill_uid(uid)
            self._return_uid(uid)
        with self._cond:
            self._events.pop(job_dir.name, None)
        shutil.rmtree(job_dir, ignore_errors=True)

    def _await_exit(
        self,
        key: str,
        job_dir: Path,
        deadline: float,
        on_progress: Callable[[dict], None] | None,
        cancel: threading.Event,
        watchdog: Watchdog | None,
        generation: int,
    ) -> tuple[dict | None, bool, Stop | None]:
        """(exit event, ended early, the watchdog's Stop if it was the one) once the job is over;
        TemplateDied at once when the template of `generation` ends first."""

        def progress(record: dict) -> None:
            if watchdog is not None:
                watchdog.observe(record, time.monotonic())
            if on_progress is not None:
                on_progress(record)

        offset = 0
        while True:
            exited = self._wait_event(key, 0.2, "exit_code")
            offset = _forward_progress(job_dir / "progress.jsonl", offset, progress)
            if exited is not None:
                return exited, False, None
            if self._died(generation):
                raise TemplateDied("the template process ended while the job ran")
            stop = watchdog.check(time.monotonic()) if watchdog is not None else None
            if stop is not None:
                return None, True, stop
            if time.monotonic() >= deadline or cancel.is_set():
                return None, True, None

    def _died(self, generation: int) -> bool:
        with self._cond:
            return generation != self.generation or "__template_exit__" in self._events

    def _claim_uids(self, uid_base: int, slots: int) -> list[int]:
        """`slots` uids no other evaluator on this host holds: each is claimed with an exclusive
        lock on /run/archloop-sandbox/uid-<n>.lock, held for this sandbox's life (the kernel drops
        it when the process ends). Two replicas on one host must not share a uid: each kills every
        process of its job's uid after the job."""
        lock_dir = Path("/run/archloop-sandbox")
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        uids: list[int] = []
        for uid in range(uid_base, uid_base + UID_RANGE):
            fd = os.open(lock_dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._uid_claims.append(fd)
            uids.append(uid)
            if len(uids) == slots:
                return uids
        raise RuntimeError(f"no {slots} free sandbox uids in {uid_base}..{uid_base + UID_RANGE - 1}")

    def _take_uid(self) -> int | None:
        if not self.is_root:
            return None
        with self._uid_lock:
            if not self._free_uids:
                raise RuntimeError("no free sandbox uid: more concurrent jobs than slots")
            return self._free_uids.pop()

    def _return_uid(self, uid: int) -> None:
        with self._uid_lock:
            self._free_uids.append(uid)


def _read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _forward_progress(path: Path, offset: int, on_progress: Callable[[dict], None]) -> int:
    try:
        with open(path) as handle:
            handle.seek(offset)
            for line in handle:
                if line.endswith("\n"):
                    on_progress(json.loads(line))
                    offset += len(line.encode())
    except (OSError, ValueError):
        pass
    return offset
