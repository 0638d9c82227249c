"""Does a service leak under hostile calls? Per RPC, and as the leak test calls it.

    python bench/leak_probe.py [--services novelty …] [--calls 5000] [--every 500] [--repeats 3]
        [--write]

Each service runs under tools.memprobe (tracemalloc on; the traced Python heap read on demand). For
every RPC that stores nothing (tests/fuzzing.py: STORING left out), a fresh service takes 500 warm-up
calls of that RPC alone, then --calls more, sampled every --every: the Python heap's growth and resident
memory's growth per 10,000 calls (tools.memprobe.Growth, the leak test's measure), and the allocation
sites whose traced bytes grew most from the first sample to the last. Then the leak test's own run
(2,000 warm-up calls, 20 × 500, every RPC mixed, raw bytes every fourth call) --repeats times on fresh
services, and once on the deliberately leaking build (memprobe's interceptor keeps 1 KiB a call): the
measure must pass the first and fail the second.

`--write` replaces this bench's section of docs/benchmarks.md; raw figures go to
bench/results/leak_probe.json.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import grpc  # noqa: E402
from fuzzing import PROTOS, STORING, burst, service_flags  # noqa: E402

from bench.report import machine, publish  # noqa: E402
from tools import memprobe  # noqa: E402

START, END = "<!-- leak-probe:start -->", "<!-- leak-probe:end -->"


def closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def measure(
    service: str, tmp: Path, warmup: int, samples: int, every: int, methods: list[str] | None,
    seed: str, leak_bytes: int = 0,
) -> dict:  # fmt: skip
    """One fresh service under the probe: warm-up calls, then `samples` × `every` calls."""
    flags = service_flags(tmp, closed_address())[service]
    proc = memprobe.start(service, tmp / "run", tmp / f"{service}.log", flags, leak_bytes)
    rng, codes = random.Random(seed), {}
    try:
        proc.wait_ready(120)
        with grpc.insecure_channel(proc.address) as channel:
            drive = lambda n: burst(channel, service, rng, n, codes, methods)  # noqa: E731
            growth, reports = memprobe.follow(proc, drive, warmup, samples, every)
    finally:
        proc.stop(10)
    first, body = reports[0], reports[-1]
    heap, rss = growth.heap_mib, growth.rss_mib
    before = {site: size for site, size, _ in first["top"]}
    grew = sorted(((size - before.get(site, 0), site) for site, size, _ in body["top"]), reverse=True)
    return {
        "service": service, "methods": methods or "mixed", "heap_mib": heap, "rss_mib": rss,
        "heap_per_10k": growth.heap_per_10k(), "rss_per_10k": growth.rss_per_10k(),
        "verdict": growth.verdict(), "codes": codes, "leak_bytes": leak_bytes,
        "grew_most": [[site, size] for size, site in grew[:3] if size > 0],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", nargs="+", default=["novelty"], choices=list(PROTOS))
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows, mixed = [], []
    with tempfile.TemporaryDirectory(prefix="archloop-leak-") as tmp:
        for service in args.services:
            methods = [m.name for m in PROTOS[service].methods if m.name not in STORING]
            for n, method in enumerate(methods):
                samples = args.calls // args.every
                row = measure(service, Path(tmp) / f"{service}-{n}", 500, samples, args.every, [method],
                              f"probe-{service}-{method}")  # fmt: skip
                rows.append(row)
                heap, rss = row["heap_per_10k"], row["rss_per_10k"]
                print(f"{service}.{method}: heap {heap:+.2f} MiB/10k, RSS {rss:+.1f}", flush=True)
            for r in range(args.repeats):
                mixed.append(measure(service, Path(tmp) / f"{service}-mixed-{r}", 2000, 20, 500, None,
                                     f"leak-{service}-{r}"))  # fmt: skip
                print(
                    f"{service} mixed {r}: {mixed[-1]['heap_per_10k']:+.2f} / {mixed[-1]['rss_per_10k']:+.1f}"
                )
        leaky = measure(
            "novelty", Path(tmp) / "leaky", 2000, 20, 500, None, "leak-novelty-0", leak_bytes=1024
        )
    publish("leak_probe", {"per_rpc": rows, "mixed": mixed, "leaky": leaky},
            section(args, rows, mixed, leaky), START, END, args.write)  # fmt: skip


def section(args: argparse.Namespace, rows: list[dict], mixed: list[dict], leaky: dict) -> str:
    lines = [
        START,
        "## Leaks under hostile calls: per RPC, and the leak test's measure",
        "",
        f"`python bench/leak_probe.py --services {' '.join(args.services)} --calls {args.calls} --every "
        f"{args.every} --repeats {args.repeats} --write` ({machine()}). Each service under tools.memprobe "
        "(tracemalloc, one frame); growth per 10,000 calls after the warm-up (memprobe.Growth: the Python "
        "heap from the medians of the first and last quarter of the samples, resident memory from the "
        f"Theil–Sen slope). The leak test's limits: heap {memprobe.HEAP_LIMIT_MIB} MiB, resident "
        f"{memprobe.RSS_LIMIT_MIB:.0f} MiB per 10,000 calls.",
        "",
        "| RPC (alone, fresh service) | heap MiB / 10k calls | resident MiB / 10k | grew most (bytes) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        sites = ", ".join(f"`{Path(s).name}` {b:,}" for s, b in r["grew_most"]) or "—"
        lines.append(
            f"| {r['service']}.{r['methods'][0]} | {r['heap_per_10k']:+.2f} | {r['rss_per_10k']:+.1f} "
            f"| {sites} |"
        )
    lines += ["", "| the leak test's run (every RPC mixed) | heap MiB / 10k | resident MiB / 10k | verdict |",
              "|---|---|---|---|"]  # fmt: skip
    for n, r in enumerate(mixed):
        lines.append(f"| {r['service']} #{n + 1} | {r['heap_per_10k']:+.2f} | {r['rss_per_10k']:+.1f} | "
                     f"{r['verdict'] or 'pass'} |")  # fmt: skip
    lines.append(f"| novelty, leaking build (1 KiB kept a call) | {leaky['heap_per_10k']:+.2f} | "
                 f"{leaky['rss_per_10k']:+.1f} | {leaky['verdict'] or 'pass'} |")  # fmt: skip
    lines += ["", "Raw samples: `bench/results/leak_probe.json`.", END]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
