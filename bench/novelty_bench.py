"""Novelty service benchmark: a real service process on loopback, realistic 2-6 KB sources.

    python bench/novelty_bench.py --entries 10000 [--entries 100000] [--rounds 3] [--write]

For each size: bulk import (admits/s through the ImportEntries stream), MinHash time per source
(in-process), check latency p50/p99 end to end over loopback gRPC (sequential CheckNovelty calls
in 3 rounds of 1000, each half one-edit near-duplicates of stored entries, half 20-edit
variants), the same check done by brute force (exact Jaccard of the query's shingle set against
every stored set, numpy, in this process; interleaved with the checks, 20 per round) as the
baseline, an empty RPC's round trip (the gRPC floor of the same moments), rebuild time on
restart, and resident memory. Sources are LEMUR model files of 2-6 KB and edited variants of them
(2-8 edits) to reach the size. `--write` replaces the novelty section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop.lemur import iter_model_sources, lemur_wheel  # noqa: E402
from archloop.novelty_client import NoveltyClient  # noqa: E402
from bench.report import machine as report_machine  # noqa: E402
from bench.report import publish  # noqa: E402
from services.novelty.fingerprint import exact_jaccard, fingerprint_source  # noqa: E402
from services.novelty.tests.variants import make_variant  # noqa: E402
from tools.localstack import ServiceProcess  # noqa: E402

SECTION_START = "<!-- novelty-bench:start -->"
SECTION_END = "<!-- novelty-bench:end -->"


def realistic_sources(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    originals = [(n, s) for n, s in iter_model_sources(lemur_wheel()) if 2000 <= len(s.encode()) <= 6000]
    rng.shuffle(originals)
    sources = originals[:count]
    while len(sources) < count:
        name, base = originals[len(sources) % len(originals)]
        sources.append((f"{name}~v{len(sources)}", make_variant(base, rng, rng.randint(2, 8))[0]))
    return sources


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def make_probes(sources: list[tuple[str, str]], queries: int, rng: random.Random) -> list[str]:
    """Half near-duplicates (one edit of a stored entry), half heavily edited (20 edits) sources,
    which are mostly novel; the corpus itself is LEMUR-heavy, so even those find many candidates."""
    probes = [make_variant(code, rng, 1)[0] for _, code in rng.sample(sources, queries // 2)]
    probes += [make_variant(code, rng, 20)[0] for _, code in rng.sample(sources, queries - len(probes))]
    rng.shuffle(probes)
    return probes


def run_size(entries: int, queries: int, rounds: int, brute_samples: int, workdir: Path) -> dict:
    print(f"== {entries} entries: building sources", flush=True)
    sources = realistic_sources(entries)
    rng = random.Random(1)
    probe_rounds = [make_probes(sources, queries, rng) for _ in range(rounds)]
    probes = [probe for round_probes in probe_rounds for probe in round_probes]

    started = time.perf_counter()
    prints = [fingerprint_source(code, 10, 256, 1) for _, code in sources[:500]]
    minhash_ms = (time.perf_counter() - started) / len(prints) * 1000

    # The baseline's data: every stored source's shingle set, as the brute force compares them.
    stored_shingles = [fingerprint_source(code, 10, 256, 1).shingles for _, code in sources]

    def brute_force(probe: str) -> float:
        started = time.perf_counter()
        query = fingerprint_source(probe, 10, 256, 1).shingles
        max(exact_jaccard(query, other) for other in stored_shingles)
        return (time.perf_counter() - started) * 1000

    db = workdir / f"novelty-{entries}.sqlite3"
    proc = ServiceProcess("novelty", workdir, workdir / f"novelty-{entries}.log", ["--db-path", str(db)])
    try:
        proc.wait_ready()
        with NoveltyClient(proc.address, timeout_seconds=60) as client:
            client.create_collection("bench")
            started = time.perf_counter()
            summary = client.import_entries("bench", sources)
            import_seconds = time.perf_counter() - started
            assert summary.created == entries, summary
            print(f"   imported at {entries / import_seconds:.0f} admits/s", flush=True)
            health = health_pb2_grpc.HealthStub(client._channel)
            ping = health_pb2.HealthCheckRequest(service="archloop.v1.NoveltyService")
            for probe in probes[:20]:  # warm-up
                client.check(probe, ["bench"])
                health.Check(ping, timeout=10)
            brute_force(probes[0])
            # The baseline runs interleaved with the checks (one brute-force query every
            # `brute_every` checks), so both see the same machine: this VM's speed drifts by tens of
            # per cent between minutes. An empty RPC (the health check) after every check gives the
            # loopback gRPC floor of the same moments. Each round has its own probes and speed-up.
            brute_every = max(1, queries // brute_samples)
            latencies, floor, brute_ms, near, candidates, round_speedups = [], [], [], 0, 0, []
            for round_probes in probe_rounds:
                round_latencies, round_brute = [], []
                for i, probe in enumerate(round_probes):
                    t0 = time.perf_counter()
                    result = client.check(probe, ["bench"])
                    round_latencies.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    health.Check(ping, timeout=10)
                    floor.append((time.perf_counter() - t0) * 1000)
                    near += result.matches[0].near_duplicate
                    candidates += result.matches[0].candidates_verified
                    if i % brute_every == brute_every // 2:
                        round_brute.append(brute_force(probe))
                round_speedups.append(statistics.median(round_brute) / percentile(round_latencies, 50))
                latencies += round_latencies
                brute_ms += round_brute
            rss_after_import = psutil.Process(proc.proc.pid).memory_info().rss
    finally:
        proc.stop(30)
    stored_shingles.clear()  # before the restart measures memory

    restart = ServiceProcess(
        "novelty", workdir, workdir / f"novelty-{entries}-restart.log", ["--db-path", str(db)]
    )
    try:
        t0 = time.perf_counter()
        restart.wait_ready(timeout_seconds=1800)
        ready_seconds = time.perf_counter() - t0
        with NoveltyClient(restart.address) as client:
            stats = client.stats()
        rss_after_rebuild = psutil.Process(restart.proc.pid).memory_info().rss
    finally:
        restart.stop(30)

    p50 = percentile(latencies, 50)
    brute = statistics.median(brute_ms)
    return {
        "entries": entries,
        "queries": len(probes),
        "candidates_per_check": round(candidates / len(probes), 1),
        "near_duplicates_found": near,
        "minhash_ms_per_source": round(minhash_ms, 3),
        "import_admits_per_second": round(entries / import_seconds, 1),
        "check_p50_ms": round(p50, 3),
        "check_p99_ms": round(percentile(latencies, 99), 3),
        "check_mean_ms": round(statistics.mean(latencies), 3),
        "empty_rpc_p50_ms": round(percentile(floor, 50), 3),
        "brute_force_queries": len(brute_ms),
        "brute_force_ms": round(brute, 1),
        "speedup_vs_brute_force": round(brute / p50, 1),
        "speedup_per_round": [round(x, 1) for x in round_speedups],
        "rebuild_seconds": round(stats.rebuild_duration_seconds, 2),
        "restart_to_serving_seconds": round(ready_seconds, 2),
        "storage_mib": round(stats.storage_bytes / 2**20, 1),
        "rss_after_import_mib": round(rss_after_import / 2**20, 1),
        "rss_after_rebuild_mib": round(rss_after_rebuild / 2**20, 1),
    }


def markdown(results: list[dict]) -> str:
    machine = report_machine()
    lines = [
        SECTION_START,
        "## Novelty service",
        "",
        f"`python bench/novelty_bench.py` on {datetime.now(UTC):%Y-%m-%d} ({machine}). Real service process,",
        "loopback gRPC, default collection settings (k 10, 256 permutations, LSH 23×11, exact verification",
        "near τ). Goals (issue 4): check p50 ≤ 3 ms, p99 ≤ 10 ms; ≥ 100× faster than brute-force exact",
        "Jaccard (the baseline: the query's shingle set against every stored set, numpy; its queries",
        "run interleaved with the checks, 20 in each of 3 rounds of 1000 checks; the speed-up is",
        "p50 against median over all rounds, each round's own in brackets). Empty RPC: a health check",
        "after every check, the loopback round trip any RPC pays on this machine.",
        "",
        "| entries | MinHash ms/source | import admits/s | LSH candidates/check | check p50 ms "
        "| check p99 ms | empty RPC p50 ms | brute force ms | speed-up | rebuild s | storage MiB | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rounds = ", ".join(f"{x:,}×" for x in r["speedup_per_round"])
        lines.append(
            f"| {r['entries']:,} | {r['minhash_ms_per_source']} | {r['import_admits_per_second']:,} "
            f"| {r['candidates_per_check']} "
            f"| {r['check_p50_ms']} | {r['check_p99_ms']} | {r['empty_rpc_p50_ms']} "
            f"| {r['brute_force_ms']:,} "
            f"| {r['speedup_vs_brute_force']:,}× ({rounds}) | {r['rebuild_seconds']} | {r['storage_mib']} "
            f"| {r['rss_after_rebuild_mib']} |"
        )
    floor = ", ".join(
        f"{r['empty_rpc_p50_ms']} of {r['check_p50_ms']} ms at {r['entries']:,}" for r in results
    )
    lines += [
        "",
        f"Of the check p50, the empty RPC's round trip takes {floor}:",
        "the Python gRPC stack's floor on this machine (a raw TCP ping-pong between two processes",
        "here takes about 0.08 ms). This VM's speed drifts by tens of per cent between minutes, which",
        "is why the baseline runs interleaved with the checks. Raw figures: `bench/results/novelty.json`.",
        SECTION_END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, action="append", help="collection size (repeatable)")
    parser.add_argument("--queries", type=int, default=1000, help="checks per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of checks, each with new probes")
    parser.add_argument("--brute-force-queries", type=int, default=20, help="baseline samples per round")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    sizes = args.entries or [10_000]
    with tempfile.TemporaryDirectory(prefix="novelty-bench-") as tmp:
        results = [run_size(n, args.queries, args.rounds, args.brute_force_queries, Path(tmp)) for n in sizes]
    publish("novelty", results, markdown(results), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
