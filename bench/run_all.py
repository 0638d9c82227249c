"""Run every benchmark and record the results in docs/benchmarks.md (what `make bench` does).

    python bench/run_all.py [--only NAME ...] [--skip NAME ...]

Each benchmark runs as its own process with `--write`, so each replaces its own section of
docs/benchmarks.md (its ratios against the baseline its service issue names, measured in the same
run). This script then writes the run's header section: date, machine, and each benchmark's
command, exit status and duration. Runs one benchmark at a time: they share the machine's cores.
Takes about 25 minutes on the 2-core machine (the 100k novelty size, the load run and the trainer
benchmark dominate). Not part of it: the benchmarks that run whole experiments (bench/loop_speed.py,
bench/novelty_precheck.py, bench/search_side_by_side.py); run each alone.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine, write_section  # noqa: E402

SECTION_START = "<!-- bench-run:start -->"
SECTION_END = "<!-- bench-run:end -->"
# name: (arguments, the baseline it is measured against)
BENCHMARKS = {
    "novelty_bench": (["--entries", "10000", "--entries", "100000"], "brute-force exact Jaccard, same run"),
    "novelty_load": ([], "one sequential client, same run"),
    "evaluator_bench": ([], "a bare training loop, same process"),
    "stage_durations": (["--programs", "2200"], "the programs' own p99.9 (deadline defaults)"),
    "screen_false_positives": ([], "the old screen policy, same run"),
    "trainer_bench": ([], "a plain peft LoRA loop, same process"),
    "speed_variants": ([], "the trainer and sampler as they were, same process"),
    "generator_bench": ([], "one-at-a-time sampling, same run"),
    "controller_bench": ([], "the ideal: work / slots"),
    "base_model_quality": ([], "its training corpus and the LEMUR originals (novelty); raw vs repaired"),
    "base_model_throughput": ([], "the tiny model, same process, alternating rounds"),  # reads the above
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="run just these")
    parser.add_argument("--skip", action="append", choices=list(BENCHMARKS), default=[])
    args = parser.parse_args()
    chosen = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    rows, failed = [], 0
    for name in chosen:
        extra, baseline = BENCHMARKS[name]
        command = [sys.executable, f"bench/{name}.py", *extra, "--write"]
        print(f"== {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        status = subprocess.run(command, cwd=ROOT).returncode
        minutes = (time.monotonic() - started) / 60
        failed += status != 0
        shown = " ".join(["python", f"bench/{name}.py", *extra])
        rows.append(f"| `{shown}` | {baseline} | "
                    f"{'ok' if status == 0 else f'exit {status}'} | {minutes:.1f} min |")  # fmt: skip
    section = "\n".join([
        SECTION_START,
        f"## Last run of `{' '.join(['python bench/run_all.py', *sys.argv[1:]])}`"
        " (`make bench` = no arguments)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()} ({platform.platform()}). Each benchmark",
        "below wrote its own section of this file in that run.",
        "",
        "| benchmark | baseline | result | duration |",
        "|---|---|---|---|",
        *rows,
        SECTION_END,
    ])  # fmt: skip
    write_section(section, SECTION_START, SECTION_END)
    print(section)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
