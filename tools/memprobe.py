"""Run an ArchLoop service with tracemalloc on, so a leak check can read its Python heap:

    python -m tools.memprobe SERVICE REPORT_FILE [service flags …]

The service runs as `python -m services.SERVICE` would. On SIGUSR2 it collects garbage and writes one
JSON object to REPORT_FILE (replaced atomically): `seq` (how many reports so far), `traced_bytes` (the
Python heap tracemalloc sees: every object and buffer Python allocated that is still alive) and `top`
(the largest allocation sites, `file:line` and bytes). Resident memory moves by tens of MiB with the
allocator's pools and fragmentation; the traced heap moves only with live Python objects, so a leak of
Python objects shows there as growth while allocator noise does not. Used by tests/test_fuzz.py's leak
test and bench/leak_probe.py; never by a service in production.

The other half, for the caller: `start` runs a service this way as a `ServiceProcess`, `sample` asks it
for a report and reads its resident memory too, and `Growth` is the leak test's measure over a series
of samples (`Growth.verdict`).

`ARCHLOOP_MEMPROBE_LEAK_BYTES=N` makes the service keep N bytes for every call it serves (a gRPC server
interceptor added here, nothing in the service's code): the deliberately leaking build that shows the
measure fails on a leak.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import os
import signal
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

FRAMES = 1  # one frame per allocation: the site, at a small cost to the service's speed
LEAK_VARIABLE = "ARCHLOOP_MEMPROBE_LEAK_BYTES"


def report(path: Path, seq: int, top: int = 12) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.statistics("lineno")
    current, peak = tracemalloc.get_traced_memory()
    body = {
        "seq": seq,
        "traced_bytes": current,
        "peak_bytes": peak,
        "top": [[f"{s.traceback[0].filename}:{s.traceback[0].lineno}", s.size, s.count] for s in stats[:top]],
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(body))
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tools.memprobe SERVICE REPORT_FILE [service flags …]", file=sys.stderr)
        return 2
    service, path = argv[0], Path(argv[1])
    tracemalloc.start(FRAMES)
    count = 0

    def on_signal(signum, frame) -> None:
        nonlocal count
        count += 1
        report(path, count)

    signal.signal(signal.SIGUSR2, on_signal)
    leak = int(os.environ.get(LEAK_VARIABLE, "0"))
    if leak:
        _leak_per_call(leak)
    entry = importlib.import_module(f"services.{service}.main")
    return entry.main(argv[2:])


def _leak_per_call(size: int) -> None:
    """Every server built from here on keeps `size` bytes per call it serves, for good."""
    import grpc

    kept: list[bytearray] = []

    class Leak(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, handler_call_details):
            kept.append(bytearray(size))
            return await continuation(handler_call_details)

    build = grpc.aio.server

    def server(*args, interceptors=(), **kwargs):
        return build(*args, interceptors=[*(interceptors or ()), Leak()], **kwargs)

    grpc.aio.server = server


# --- the caller's side ------------------------------------------------------------------------------


# glibc keeps fewer, smaller free pools: resident memory follows live memory more closely
ALLOCATOR = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "131072"}


def start(name: str, run_dir: Path, log_path: Path, flags: list[str], leak_bytes: int = 0):
    """The service `name` under this probe (a `tools.localstack.ServiceProcess`; `.report` is its file),
    with ALLOCATOR's settings; `leak_bytes`: the deliberately leaking build."""
    from tools.localstack import ServiceProcess

    report_path = run_dir / f"{name}.memory.json"
    launcher = [sys.executable, "-m", "tools.memprobe", name, str(report_path)]
    env = {**os.environ, **ALLOCATOR, **({LEAK_VARIABLE: str(leak_bytes)} if leak_bytes else {})}
    proc = ServiceProcess(name, run_dir, log_path, flags, env, launcher=launcher)
    proc.report = report_path  # type: ignore[attr-defined]
    return proc


def follow(proc, drive, warmup: int, samples: int, every: int) -> tuple[Growth, list[dict]]:
    """`drive(n)` makes n calls to the service: `warmup` of them, then `samples` times `every`, with a
    sample after each; the Growth over those samples, and each sample's report."""
    drive(warmup)
    heap, rss, reports = [], [], []
    for _ in range(samples):
        drive(every)
        traced, resident, body = sample(proc)
        heap.append(traced)
        rss.append(resident)
        reports.append(body)
    return Growth(heap, rss, every), reports


def sample(proc, timeout_seconds: float = 60.0) -> tuple[float, float, dict]:
    """(traced Python heap MiB, resident MiB of the service and its children, the whole report)."""
    import psutil

    before = _read(proc.report).get("seq", 0)
    os.kill(proc.proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_seconds
    while (body := _read(proc.report)).get("seq", 0) <= before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} wrote no memory report within {timeout_seconds:g} s")
        time.sleep(0.05)
    process = psutil.Process(proc.proc.pid)
    rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    return body["traced_bytes"] / 2**20, rss, body


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# The leak test's limits, per 10,000 calls. A leak of k bytes per call grows the heap by k × 10⁴ bytes
# (1 KiB a call: 9.8 MiB); the traced heap of a service that does not leak moves by well under 1 MiB
# (docs/benchmarks.md#leaks-under-hostile-calls, bench/leak_probe.py). Resident memory is checked only
# for gross growth outside Python's heap (C extensions: gRPC, protobuf, torch), where its noise allows.
HEAP_LIMIT_MIB = 2.0
RSS_LIMIT_MIB = 64.0


@dataclass
class Growth:
    """Samples taken every `calls_per_sample` calls after a warm-up."""

    heap_mib: list[float]
    rss_mib: list[float]
    calls_per_sample: int

    def heap_per_10k(self) -> float:
        """Median of the last quarter minus the median of the first, scaled to 10,000 calls."""
        return self._per_10k(self.heap_mib)

    def rss_per_10k(self) -> float:
        """The same for resident memory, from the Theil–Sen slope (robust to a few spikes)."""
        pairs = itertools.combinations(enumerate(self.rss_mib), 2)
        slope = statistics.median((b - a) / (j - i) for (i, a), (j, b) in pairs)
        return slope * 10_000 / self.calls_per_sample

    def _per_10k(self, values: list[float]) -> float:
        quarter = max(1, len(values) // 4)
        rise = statistics.median(values[-quarter:]) - statistics.median(values[:quarter])
        span = (len(values) - quarter) * self.calls_per_sample
        return rise * 10_000 / span

    def verdict(self) -> str:
        """Empty when neither measure grows past its limit; else what grew."""
        problems = []
        if self.heap_per_10k() > HEAP_LIMIT_MIB:
            problems.append(f"the Python heap grew {self.heap_per_10k():.2f} MiB per 10,000 calls")
        if self.rss_per_10k() > RSS_LIMIT_MIB:
            problems.append(f"resident memory grew {self.rss_per_10k():.1f} MiB per 10,000 calls")
        return "; ".join(problems)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
