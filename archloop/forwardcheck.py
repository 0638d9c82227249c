"""Does a model file build for a task's shapes and run one forward pass? (the corpus's `forward` stage)

Only about 75 % of LEMUR's files build for (1, 3, 32, 32) → 10 (AlexNet-derived stems for 224 px
fail; docs/method.md#the-lemur-wheel). A file that cannot run for the task it is shown with is a bad
lesson for the code LM, so the corpus keeps a chat pair only when the file passes the evaluator's
first two run stages for that task: `Net(in_shape, out_shape, prm, device)` builds and `forward` of a
batch of two in eval mode returns finite (2, num_classes) logits.

The check runs first on PyTorch's `meta` device (shapes only: no memory, no arithmetic, so a 100M-
parameter model costs milliseconds); a file that uses something the meta device cannot do (`.item()`,
data-dependent branches, NumPy) is checked again for real on the CPU. Checks run in a pool of worker
processes (each file is executed, so never in the caller's process), with a time limit per file and
an address-space limit per worker.

Results are keyed by the sha256 of the source. The table for the pinned LEMUR wheel ships with the
package (`archloop/data/lemur-forward-v1.json.gz`), so a corpus build does not repeat ~16k checks;
`archloop corpus build --recheck-forward` recomputes them and a test rechecks a sample.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import queue
import resource
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FORWARD_TABLE = Path(__file__).parent / "data" / "lemur-forward-v1.json.gz"
TABLE_VERSION = 1
PRM = {"lr": 0.01, "momentum": 0.9, "dropout": 0.2, "batch": 64, "epoch": 1}
WORKER_ADDRESS_SPACE = 8 << 30  # torch needs ≥ 4 GB of address space; the real fallback may build big models
_REASON_CHARS = 240


@dataclass(frozen=True)
class ForwardResult:
    ok: bool
    parameters: int = 0  # trainable parameters (what the evaluator's budget counts); 0 when it did not build
    reason: str = ""  # why not, "stage: message"
    device: str = "meta"  # where the deciding check ran: "meta" or "cpu"
    # with `structure`: its architecture (archloop.archgraph.Architecture.as_dict: wiring and op hash,
    # tokens, graph), not in the shipped table
    architecture: dict = dataclasses.field(default_factory=dict)

    def row(self) -> list:
        return [self.ok, self.parameters, self.reason, self.device]

    @classmethod
    def from_row(cls, row: list) -> ForwardResult:
        return cls(bool(row[0]), int(row[1]), str(row[2]), str(row[3]))


class _TimeLimit(Exception):
    pass


def _on_alarm(_signum: int, _frame: object) -> None:
    raise _TimeLimit()


def _meta_only(exc: BaseException) -> bool:
    """The failure is the meta device's, not the model's: retry on the CPU."""
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or "meta" in text or "data-dependent" in text


def _attempt(
    code: str, input_shape: tuple[int, ...], num_classes: int, device_name: str, structure: bool = False
) -> ForwardResult:
    import torch

    from archloop.archgraph import Architecture
    from archloop.archtrace import record

    stage = "instantiate"
    try:
        namespace: dict = {"__name__": "candidate"}
        exec(compile(code, "<model>", "exec"), namespace)
        device = torch.device(device_name)
        with device:
            model = namespace["Net"]((1, *input_shape), (num_classes,), dict(PRM), device)
            stage = "forward"
            model.eval()
            with torch.no_grad():
                output = model(torch.zeros((2, *input_shape)))
            if structure:
                stage = "architecture"
                architecture = Architecture.of(record(model, torch.zeros((1, *input_shape)))).as_dict()
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    except _TimeLimit:
        raise
    except BaseException as exc:
        if device_name == "meta" and _meta_only(exc):
            raise
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return ForwardResult(False, 0, f"{stage}: {message}"[:_REASON_CHARS], device_name)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, num_classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        return ForwardResult(
            False, parameters, f"forward: output {shape}, expected (2, {num_classes})", device_name
        )
    if device_name != "meta" and not bool(torch.isfinite(output).all()):
        return ForwardResult(False, parameters, "forward: the output holds NaN or infinity", device_name)
    return ForwardResult(True, parameters, "", device_name, architecture if structure else {})


def _build(code: str, input_shape: tuple[int, ...], num_classes: int):
    import torch

    namespace: dict = {"__name__": "candidate"}
    exec(compile(code, "<model>", "exec"), namespace)
    torch.manual_seed(0)
    return namespace["Net"]((1, *input_shape), (num_classes,), dict(PRM), torch.device("cpu")).eval()


def _attempt_identical(
    code: str, reference: str, input_shape: tuple[int, ...], num_classes: int
) -> ForwardResult:
    """Is `code` (a rewrite of `reference`) the same network? After a first forward materialises its
    shape-inferring layers, it must have the reference's parameter count and state names, and with the
    reference's weights loaded give the reference's output, bit for bit, on a random batch."""
    import torch

    stage = "reference"
    try:
        expected = _build(reference, input_shape, num_classes)
        stage = "instantiate"
        rewritten = _build(code, input_shape, num_classes)
        stage = "forward"
        inputs = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            rewritten(inputs)
            stage = "compare"
            count = sum(p.numel() for p in rewritten.parameters() if p.requires_grad)
            wanted = sum(p.numel() for p in expected.parameters() if p.requires_grad)
            if count != wanted:
                return ForwardResult(False, count, f"compare: {count} parameters, reference {wanted}", "cpu")
            rewritten.load_state_dict(expected.state_dict(), strict=True)
            same = torch.equal(rewritten(inputs), expected(inputs))
    except _TimeLimit:
        raise
    except BaseException as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return ForwardResult(False, 0, f"{stage}: {message}"[:_REASON_CHARS], "cpu")
    if not same:
        return ForwardResult(False, count, "compare: the output differs from the reference's", "cpu")
    return ForwardResult(True, count, "", "cpu")


def check_forward(
    code: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    timeout_seconds: float = 60.0,
    reference: str | None = None,
    structure: bool = False,
) -> ForwardResult:
    """Check one file in this process (call it in a worker: the file's code is executed); with
    `reference`, check that the file is the same network as the reference (`_attempt_identical`);
    with `structure`, record its architecture too."""
    import torch

    torch.set_num_threads(1)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_seconds)
    try:
        if reference is not None:
            return _attempt_identical(code, reference, input_shape, num_classes)
        try:
            return _attempt(code, input_shape, num_classes, "meta", structure)
        except _TimeLimit:
            raise
        except BaseException:
            torch.manual_seed(0)
            return _attempt(code, input_shape, num_classes, "cpu", structure)
    except _TimeLimit:
        return ForwardResult(False, 0, f"timeout: no result within {timeout_seconds:g} s", "cpu")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _limit_worker() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = WORKER_ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(WORKER_ADDRESS_SPACE, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _warm_up() -> None:
    """torch's import and its first meta-device forward (lazy registrations: seconds on a busy machine)
    happen before the first item, so an item's time limit measures its model, not the worker's start."""
    import torch

    with torch.device("meta"):
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(30, 2))(
            torch.zeros(2, 3, 32, 32)
        )


def _serve() -> int:
    """Worker loop (`python -m archloop.forwardcheck`): one JSON item per stdin line, one result per line on
    the stdout it was started with (the files' own prints go to /dev/null)."""
    _limit_worker()
    _warm_up()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    for line in sys.stdin:
        code, shape, classes, timeout, reference, structure = json.loads(line)
        result = check_forward(code, tuple(shape), classes, timeout, reference, structure)
        out.write(json.dumps([*result.row(), result.architecture]) + "\n")
    return 0


class _Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "archloop.forwardcheck"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def check(
        self,
        code: str,
        shape: tuple[int, ...],
        classes: int,
        timeout_seconds: float,
        reference: str | None,
        structure: bool = False,
    ) -> ForwardResult:
        """The worker's answer; a worker that dies or hangs past the limit is killed and the item failed."""
        assert self.process.stdin and self.process.stdout
        item = [code, list(shape), classes, timeout_seconds, reference, structure]
        try:
            self.process.stdin.write(json.dumps(item) + "\n")
            self.process.stdin.flush()
            ready, _, _ = select.select([self.process.stdout], [], [], timeout_seconds + 30)
            line = self.process.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if line:
            *row, architecture = json.loads(line)
            result = ForwardResult.from_row(row)
            return dataclasses.replace(result, architecture=architecture) if architecture else result
        self.close()
        code_ = self.process.returncode
        why = (
            "no answer within the time limit"
            if code_ in (None, -signal.SIGKILL)
            else f"the checker died ({code_})"
        )
        return ForwardResult(False, 0, f"crash: {why}", "cpu")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def check_many(
    items: Iterable[tuple], workers: int = 0, timeout_seconds: float = 60.0, structure: bool = False
) -> dict[str, ForwardResult]:
    """Check (key, code, input_shape, num_classes[, reference]) items in worker processes; {key: result}.
    An item with a reference asks whether the code is the same network (see check_forward); with
    `structure`, each passing result carries its architecture."""
    todo = list(items)
    if not todo:
        return {}
    queue_: queue.SimpleQueue = queue.SimpleQueue()
    for item in todo:
        queue_.put(item)
    results: dict[str, ForwardResult] = {}

    def drive() -> None:
        worker = _Worker()
        try:
            while True:
                try:
                    key, code, shape, classes, *reference = queue_.get_nowait()
                except queue.Empty:
                    return
                if worker.process.poll() is not None:
                    worker = _Worker()
                given = reference[0] if reference else None
                results[key] = worker.check(code, shape, classes, timeout_seconds, given, structure)
        finally:
            worker.close()

    count = workers or max(1, min(len(todo), os.cpu_count() or 1))
    threads = [threading.Thread(target=drive, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def load_table(path: Path = FORWARD_TABLE) -> dict[str, dict[str, ForwardResult]]:
    """{code sha256: {dataset: result}}; empty when the file does not exist."""
    if not Path(path).exists():
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    if data.get("version") != TABLE_VERSION:
        return {}
    return {
        sha: {dataset: ForwardResult.from_row(row) for dataset, row in per_task.items()}
        for sha, per_task in data["results"].items()
    }


def save_table(table: dict[str, dict[str, ForwardResult]], path: Path = FORWARD_TABLE) -> None:
    payload = {
        "version": TABLE_VERSION,
        "prm": PRM,
        "results": {
            sha: {dataset: result.row() for dataset, result in sorted(per_task.items())}
            for sha, per_task in sorted(table.items())
        },
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # mtime 0: the same table gives the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write((json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n").encode())


__all__ = ["ForwardResult", "check_forward", "check_many", "load_table", "save_table"]


if __name__ == "__main__":
    sys.exit(_serve())
