"""Novelty service under sustained concurrent load: many clients, many checks, one service process.

    python bench/novelty_load.py [--entries 10000] [--clients 32] [--checks 100000] [--write]

A real service on loopback holds `--entries` realistic 2-6 KB sources (LEMUR files and edited
variants, as bench/novelty_bench.py). `--clients` concurrent clients (asyncio tasks, each with its
own channel, spread over 4 client processes so the clients are not the bottleneck) send
`--checks` CheckNovelty calls in all, half near-duplicates of stored entries, half heavily edited.
Reported: errors (goal: none), throughput, latency p50/p90/p99/p99.9/max under load, and the
service's resident memory before, at its peak and after (goal: bounded). The baseline is the same
service's latency with one client in the same run (the load ratio says what contention costs).
`--write` replaces the load section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop.clients import aio_channel  # noqa: E402
from archloop.novelty_client import NoveltyClient  # noqa: E402
from archloop.v1 import novelty_pb2, novelty_pb2_grpc  # noqa: E402
from bench.novelty_bench import realistic_sources  # noqa: E402
from bench.report import machine as report_machine  # noqa: E402
from bench.report import publish  # noqa: E402
from services.novelty.tests.variants import make_variant  # noqa: E402
from tools.localstack import ServiceProcess  # noqa: E402

SECTION_START = "<!-- novelty-load:start -->"
SECTION_END = "<!-- novelty-load:end -->"
CLIENT_PROCESSES = 4


def _client_process(address: str, probes: list[str], clients: int, checks: int, out) -> None:
    """`clients` concurrent tasks sending `checks` checks in all; puts (latencies ms, errors)."""

    async def main() -> tuple[list[float], list[str]]:
        latencies: list[float] = []
        errors: list[str] = []
        counter = iter(range(checks))

        async def client(index: int) -> None:
            async with aio_channel(address) as channel:
                stub = novelty_pb2_grpc.NoveltyServiceStub(channel)
                for i in counter:
                    request = novelty_pb2.CheckNoveltyRequest(code=probes[(i * 7 + index) % len(probes)],
                                                              collections=["load"])  # fmt: skip
                    t0 = time.perf_counter()
                    try:
                        await stub.CheckNovelty(request, timeout=60)
                    except Exception as exc:  # every failure is counted, none may happen
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        continue
                    latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(client(i) for i in range(clients)))
        return latencies, errors

    out.put(asyncio.run(main()))


def run(entries: int, clients: int, checks: int, workdir: Path) -> dict:
    sources = realistic_sources(entries)
    rng = random.Random(2)
    probes = [make_variant(code, rng, 1)[0] for _, code in rng.sample(sources, 250)]
    probes += [make_variant(code, rng, 20)[0] for _, code in rng.sample(sources, 250)]
    proc = ServiceProcess(
        "novelty", workdir, workdir / "novelty.log", ["--db-path", str(workdir / "n.sqlite3")]
    )
    proc.wait_ready()
    service = psutil.Process(proc.proc.pid)
    try:
        with NoveltyClient(proc.address, timeout_seconds=600) as client:
            client.create_collection("load")
            client.import_entries("load", sources)
            for probe in probes[:50]:
                client.check(probe, ["load"])  # warm-up
            single = []
            for probe in probes[:500]:
                t0 = time.perf_counter()
                client.check(probe, ["load"])
                single.append((time.perf_counter() - t0) * 1000)
        rss_before = service.memory_info().rss
        peak = [rss_before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak.append(service.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        per_process = [
            checks // CLIENT_PROCESSES + (i < checks % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)
        ]
        workers = [
            context.Process(target=_client_process,
                            args=(proc.address, probes, clients // CLIENT_PROCESSES, n, queue))
            for n in per_process
        ]  # fmt: skip
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        results = [queue.get(timeout=3600) for _ in workers]
        seconds = time.perf_counter() - started
        for worker in workers:
            worker.join()
        done.set()
        sampler.join()
        rss_after = service.memory_info().rss
        alive = proc.proc.poll() is None
    finally:
        proc.stop(30)
    latencies = np.array([x for lat, _ in results for x in lat])
    errors = [e for _, errs in results for e in errs]
    p = {q: float(np.percentile(latencies, q)) for q in (50, 90, 99, 99.9)}
    single_p50 = float(np.percentile(np.array(single), 50))
    return {
        "entries": entries,
        "clients": clients,
        "checks": int(len(latencies) + len(errors)),
        "errors": len(errors),
        "error_samples": errors[:5],
        "service_alive_after": alive,
        "seconds": round(seconds, 1),
        "checks_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(p[50], 2),
        "p90_ms": round(p[90], 2),
        "p99_ms": round(p[99], 2),
        "p999_ms": round(p[99.9], 2),
        "max_ms": round(float(latencies.max()), 2),
        "single_client_p50_ms": round(single_p50, 3),
        "single_client_checks_per_second": round(1000 / float(np.mean(single)), 1),
        "throughput_vs_single_client": round((len(latencies) / seconds) / (1000 / float(np.mean(single))), 2),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_peak_mib": round(max(peak) / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
    }


def markdown(r: dict) -> str:
    return "\n".join([
        SECTION_START,
        "## Novelty service under load",
        "",
        f"`python bench/novelty_load.py --entries {r['entries']} --clients {r['clients']}"
        f" --checks {r['checks']}` — {report_machine()}, {datetime.now(UTC):%Y-%m-%d}."
        f" One service process; {r['clients']} concurrent clients (asyncio tasks in 4 client processes,"
        " own channel each) on the same 2 cores.",
        "",
        "| checks | errors | seconds | checks/s | p50 | p90 | p99 | p99.9 | max"
        " | RSS before / peak / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['checks']:,} | {r['errors']} | {r['seconds']} | {r['checks_per_second']} | {r['p50_ms']} ms |"
        f" {r['p90_ms']} ms | {r['p99_ms']} ms | {r['p999_ms']} ms | {r['max_ms']} ms |"
        f" {r['rss_before_mib']} / {r['rss_peak_mib']} / {r['rss_after_mib']} MiB |",
        "",
        f"Baseline in the same run, one client, sequential: p50 {r['single_client_p50_ms']} ms,"
        f" {r['single_client_checks_per_second']} checks/s; under load the service serves"
        f" **{r['throughput_vs_single_client']}×** the single client's rate (latency under load is mostly"
        " queueing: the clients share the 2 cores with the service).",
        SECTION_END,
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if args.clients % CLIENT_PROCESSES:
        parser.error(f"--clients must be a multiple of {CLIENT_PROCESSES}")
    with tempfile.TemporaryDirectory(prefix="novelty-load-") as tmp:
        result = run(args.entries, args.clients, args.checks, Path(tmp))
    publish("novelty_load", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0 if result["errors"] == 0 and result["service_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
