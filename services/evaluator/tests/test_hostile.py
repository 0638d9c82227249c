"""A corpus of hostile and broken programs through a real evaluator service, one after another.

For every program: its terminal status within the time limit + 5 s, the service still SERVING, no
sandbox process left alive, no file where the program tried to write outside its directory, and
no connection reaching a listener on the host's loopback. Most hostile programs are stopped by the
static screen (UNSAFE); those that pass it (loops, memory bombs, floods, crashes) meet the sandbox.
The sandbox's own defences with the screen bypassed are tested in test_evaluation.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from archloop.clients import health_status
from archloop.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from services.evaluator.sandbox import Sandbox
from services.evaluator.tests.test_evaluation import GOOD, _sandbox_processes
from services.evaluator.tests.test_gvisor import require_runsc

pytestmark = pytest.mark.slow

TIME_LIMIT = 5.0
ESCAPE = "/tmp/archloop-hostile-escape"
INIT = "super().__init__()"
FORWARD = "return self.body(x)"
LEARN = "for x, y in train_data:"


def _at(anchor: str, body: str) -> str:
    """GOOD with `body` at the indentation of the line holding `anchor`: before a return or a loop
    header (so it runs first), after anything else."""
    line = next(line for line in GOOD.splitlines() if anchor in line)
    indent = line[: len(line) - len(line.lstrip())]
    inserted = "\n".join(indent + part for part in body.splitlines())
    before = anchor in (FORWARD, LEARN)
    return GOOD.replace(line, inserted + "\n" + line if before else line + "\n" + inserted)


def _module(prefix: str, program: str = GOOD) -> str:
    """`program` with module-level `prefix` in front (imports, mostly)."""
    return prefix + "\n" + program


PORT_PLACEHOLDER = "{port}"

# name: (program, allowed terminal statuses)
CORPUS: dict[str, tuple[str, set[str]]] = {
    "socket_connect": (
        _module("import socket", _at(INIT, "socket.create_connection(('127.0.0.1', {port}))")), {"UNSAFE"}
    ),
    "urllib_fetch": (_module("import urllib.request"), {"UNSAFE"}),
    "write_outside": (_at(INIT, f"open({ESCAPE!r}, 'w').write('x')"), {"UNSAFE"}),
    "read_environment": (_module("import os", _at(INIT, "print(os.environ)")), {"UNSAFE"}),
    "fork_bomb": (_module("import os", _at(INIT, "while True:\n    os.fork()")), {"UNSAFE"}),
    "subprocess_spawn": (_module("import subprocess", _at(INIT, "subprocess.run(['id'])")), {"UNSAFE"}),
    "os_exit": (_module("import os", _at(INIT, "os._exit(3)")), {"UNSAFE"}),
    "ctypes_segfault": (_module("import ctypes", _at(INIT, "ctypes.string_at(0)")), {"UNSAFE"}),
    "dunder_import": (_at(INIT, "__import__('os').system('id')"), {"UNSAFE"}),
    "importlib_trick": (_module("import importlib"), {"UNSAFE"}),
    "builtins_open": (_at(INIT, "__builtins__['open']('/etc/passwd')"), {"UNSAFE"}),
    "subclasses_escape": (_at(INIT, "().__class__.__bases__[0].__subclasses__()"), {"UNSAFE"}),
    "globals_escape": (_at(INIT, "g = self.forward.__globals__"), {"UNSAFE"}),
    "torch_os": (_at(INIT, f"torch.os.system('touch {ESCAPE}')"), {"UNSAFE"}),
    "typing_sys": (_module("import typing", _at(INIT, "typing.sys.modules['os'].system('id')")), {"UNSAFE"}),
    "getattr_dunder": (_at(INIT, "getattr(self, '__cla' + 'ss__')"), {"UNSAFE"}),
    "torch_load": (_at(INIT, "torch.load('/etc/passwd')"), {"UNSAFE"}),
    "torch_hub": (_at(INIT, "torch.hub.load('a/b', 'c')"), {"UNSAFE"}),
    "exec_string": (_at(INIT, "exec('import os')"), {"UNSAFE"}),
    "eval_string": (_at(INIT, "eval('1 + 1')"), {"UNSAFE"}),
    "thread_spawn": (_module("import threading"), {"UNSAFE"}),
    "private_torch": (_at(INIT, "torch._C._get_tracing_state()"), {"UNSAFE"}),
    "loop_in_init": (_at(INIT, "while True:\n    pass"), {"TIMEOUT"}),
    "loop_in_forward": (_at(FORWARD, "while True:\n    pass"), {"TIMEOUT"}),
    "loop_in_learn": (_at(LEARN, "while True:\n    pass"), {"TIMEOUT"}),
    "busy_compute": (_at(INIT, "a = torch.randn(999, 999)\nwhile True:\n    a = a @ a / 999"), {"TIMEOUT"}),
    "memory_bomb_list": (_at(INIT, "waste = [0] * (10 ** 10)"), {"OUT_OF_MEMORY"}),
    "memory_bomb_tensor": (_at(INIT, "waste = torch.empty(10 ** 11)"), {"OUT_OF_MEMORY"}),
    "huge_stdout": (_at(INIT, "print('x' * 10 ** 8)"), {"OK", "INSTANTIATE_ERROR"}),
    "nan_loss": (GOOD.replace("loss = self.criteria[0](self(x), y)",
                              "loss = self.criteria[0](self(x), y) * float('nan')"), {"NON_FINITE_LOSS"}),
    "recursion_bomb": (_at(INIT, "def deep(n):\n    return deep(n + 1)\ndeep(0)"), {"INSTANTIATE_ERROR"}),
    "system_exit": (_at(INIT, "raise SystemExit(3)"), {"INSTANTIATE_ERROR"}),
    "nan_output": (_at(FORWARD, "return self.body(x) * float('nan')"), {"FORWARD_ERROR"}),
    "tuple_output": (_at(FORWARD, "return (self.body(x),)"), {"WRONG_OUTPUT_SHAPE"}),
    "binary_garbage": ("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {"PARSE_ERROR"}),
    "truncated_output": (GOOD[: len(GOOD) // 2], {"PARSE_ERROR"}),
}  # fmt: skip


@pytest.fixture(scope="module")
def listener():
    """A loopback server on the host that counts every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("sandbox", ["namespaces", "gvisor"])
def test_hostile_corpus_through_the_service(start_service, tmp_path, listener, sandbox) -> None:
    if sandbox == "gvisor":
        require_runsc()
    port, accepted = listener
    proc = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"), "--sandbox", sandbox)
    service = "archloop.v1.EvaluatorService"
    outcomes = {}
    with grpc.insecure_channel(proc.address) as channel:
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        for name, (program, allowed) in CORPUS.items():
            request = evaluator_pb2.EvaluateCandidateRequest(
                candidate_id=name,
                code=program.replace(PORT_PLACEHOLDER, str(port)),
                protocol=common_pb2.EvaluationProtocol(dataset="digits", time_limit_seconds=TIME_LIMIT),
            )
            started = time.monotonic()
            result = stub.EvaluateCandidate(request, timeout=TIME_LIMIT + 60).result
            seconds = time.monotonic() - started
            status = evaluator_pb2.EvaluationStatus.Name(result.status).removeprefix("EVALUATION_STATUS_")
            outcomes[name] = status
            assert status in allowed, (name, status, result.stages[-1].message)
            isolation = evaluator_pb2.NetworkIsolation.Name(result.network_isolation)
            if result.stages[-1].stage > evaluator_pb2.EVALUATION_STAGE_CONTRACT:  # it ran: say where
                assert isolation == ("NETWORK_ISOLATION_GVISOR" if sandbox == "gvisor" else
                                     "NETWORK_ISOLATION_NAMESPACE"), name  # fmt: skip
            assert seconds <= TIME_LIMIT + 5, (name, seconds)
            assert health_status(proc.address, service) == "SERVING", name
            assert not _sandbox_processes(), name
    assert not Path(ESCAPE).exists()
    assert accepted == []
    assert list((tmp_path / "jobs").iterdir()) == []  # every job directory was removed
    assert proc.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids are only used when the service runs as root")
def test_replicas_on_one_host_claim_different_sandbox_uids(tmp_path: Path) -> None:
    """Each replica kills every process of its job's uid after the job: a shared uid would kill the
    other replica's candidate. Claims are host-wide lock files, released when a sandbox stops."""
    first = Sandbox(tmp_path / "a", slots=2)
    second = Sandbox(tmp_path / "b", slots=2)
    try:
        assert len(set(first._free_uids)) == 2 and len(set(second._free_uids)) == 2
        assert not set(first._free_uids) & set(second._free_uids)
        claimed = set(first._free_uids)
        first.stop()
        third = Sandbox(tmp_path / "c", slots=2)
        assert set(third._free_uids) == claimed  # given back
        third.stop()
    finally:
        first.stop()
        second.stop()
