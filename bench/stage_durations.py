"""How long each sandboxed step of real programs takes: where the watchdog's deadline defaults come from.

    python bench/stage_durations.py [--programs 300] [--corpus DIR] [--write]

Evaluates a seeded sample of the corpus's training programs (what the embedded model learns to write)
through the real evaluator (sandbox, digits, the default protocol but `--max-train-images` to keep the
epoch short: the first batch is what is timed) and reports, per step (instantiate, forward, setup,
first batch), the median, the 99th and 99.9th percentiles and the maximum, then the deadline each
default gives: max(floor, p99.9 × margin). Programs that fail are timed up to where they fail. With
`--write` the table goes to docs/benchmarks.md ("Stage durations").
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus, paths  # noqa: E402
from bench.report import machine, publish  # noqa: E402
from services.evaluator.evaluation import Evaluator, Protocol  # noqa: E402
from services.evaluator.sandbox import Sandbox  # noqa: E402
from services.evaluator.watchdog import Deadlines  # noqa: E402

STEPS = ("instantiate", "forward", "setup", "first_batch")
DEFAULTS = {
    "instantiate": Deadlines.instantiate_seconds,
    "forward": Deadlines.forward_seconds,
    "setup": Deadlines.setup_seconds,
    "first_batch": Deadlines.first_batch_seconds,
}
START, END = "<!-- stage-durations:start -->", "<!-- stage-durations:end -->"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=300)
    parser.add_argument("--corpus", type=Path, default=None, help="[default: the embedded corpus]")
    parser.add_argument("--max-train-images", type=int, default=256)
    parser.add_argument("--margin", type=float, default=10.0)
    parser.add_argument("--floor", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    corpus_dir = args.corpus or paths.corpus_dir()
    programs = sorted(corpus.training_programs(corpus_dir).items())
    sample = random.Random(args.seed).sample(programs, min(args.programs, len(programs)))
    sandbox = Sandbox(Path("/tmp/archloop-stage-durations"))
    sandbox.start()
    # deadlines off: every step runs as long as it takes (the time limit stays the backstop)
    evaluator = Evaluator(sandbox, ROOT / "data", deadlines=Deadlines(0, 0, 0, 0, 0, 0))
    protocol = Protocol(time_limit_seconds=120, max_train_images=args.max_train_images)
    seconds: dict[str, list[float]] = {step: [] for step in STEPS}
    statuses: dict[str, int] = {}
    started = time.monotonic()
    try:
        for name, code in sample:
            result = evaluator.evaluate(name, code, protocol)
            statuses[result.status] = statuses.get(result.status, 0) + 1
            for step in STEPS:
                if step in result.step_seconds:
                    seconds[step].append(result.step_seconds[step])
    finally:
        sandbox.stop()
    wall = time.monotonic() - started
    rows = []
    for step in STEPS:
        values = seconds[step]
        p999 = percentile(values, 0.999)
        rows.append({
            "step": step, "n": len(values), "median": statistics.median(values),
            "p99": percentile(values, 0.99), "p99_9": p999, "max": max(values),
            "suggested": max(args.floor, p999 * args.margin), "default": DEFAULTS[step],
        })  # fmt: skip
    lines = [
        START,
        "## Stage durations (the watchdog's deadlines)",
        "",
        f"`python bench/stage_durations.py --programs {args.programs} --write` — {len(sample)} programs of "
        f"{corpus_dir.name} (seed {args.seed}), digits, {args.max_train_images} training images, "
        f"{machine()}, {wall / 60:.1f} min. Verdicts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        + ".",
        "",
        f"| step | n | median s | p99 s | p99.9 s | max s | max({args.floor:g}, p99.9 × {args.margin:g}) "
        "| default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['n']} | {r['median']:.3f} | {r['p99']:.3f} | {r['p99_9']:.3f} "
            f"| {r['max']:.3f} | {r['suggested']:.1f} | {r['default']:g} |"
        )
    lines += [
        "",
        "Steps are timed by the child's clock in its progress records (instantiate includes the module's "
        "own code; the deadlines, on the service's clock, also hold the fork and the sandbox's set-up). "
        "A CPU shared with other work stretches every "
        "figure; the margin is for that.",
        END,
    ]
    rounded = {step: [round(x, 4) for x in values] for step, values in seconds.items()}
    publish("stage_durations", {"rows": rows, "statuses": statuses, "seconds": rounded},
            "\n".join(lines), START, END, args.write)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
