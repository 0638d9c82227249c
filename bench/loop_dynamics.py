"""Does the loop improve the generator? The first cycles of an experiment against its last, with intervals.

    python bench/loop_dynamics.py EXPERIMENT [--home DIR] [--cycles 3] [--write]

Reads the controller's ledger (`$ARCHLOOP_HOME/data/controller/ledger.sqlite3`) and pools the first
--cycles and the last --cycles cycles of the experiment:
- **valid rate** (Wilson 95 % interval over the pooled candidates);
- **mean first-epoch accuracy of the valid programs** (t-based 95 % interval);
- **C_t**, the share of all generated candidates whose first-epoch accuracy reaches τ (invalid ones
  count as failures; docs/method.md#what-to-measure), with a Wilson interval;
- **admitted** programs and the share of candidates rejected as near-duplicates of the corpus (which
  holds the run's own earlier admissions).
Non-overlapping intervals are what "the curve rises" means here; with a dozen candidates a cycle,
most differences are within the noise, and the section says so with the numbers. `--write` replaces
this bench's section of docs/benchmarks.md; raw figures go to bench/results/loop_dynamics.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine, publish  # noqa: E402
from services.controller import config, stats  # noqa: E402
from services.controller.ledger import Ledger  # noqa: E402

SECTION_START = "<!-- loop-dynamics:start -->"
SECTION_END = "<!-- loop-dynamics:end -->"


def pooled(rows: list, threshold: float) -> dict:
    """The figures of a group of candidates (ledger rows)."""
    valid = [r for r in rows if r.valid]
    accuracies = [r.accuracy for r in valid]
    elite = sum(a >= threshold for a in accuracies)
    duplicates = sum(r.decision == "rejected" and "near-duplicate" in (r.reason or "") for r in rows)
    return {
        "candidates": len(rows),
        "valid": stats.wilson_interval(len(valid), len(rows)),
        "mean_accuracy": stats.mean_t_interval(accuracies),
        "elite_concentration": stats.wilson_interval(elite, len(rows)),
        "admitted": sum(r.decision == "admitted" for r in rows),
        "near_duplicate_share": duplicates / len(rows) if rows else 0.0,
    }


def markdown(result: dict) -> str:
    def interval(x: tuple[float, float, float], pct: bool) -> str:
        scale, unit = (100, " %") if pct else (1, "")
        digits = 1 if pct else 3
        return f"{scale * x[0]:.{digits}f}{unit} [{scale * x[1]:.{digits}f}, {scale * x[2]:.{digits}f}]"

    first, last = result["first"], result["last"]
    k = result["cycles_pooled"]
    return "\n".join(
        [
            SECTION_START,
            "## Loop dynamics: the first cycles of an experiment against its last",
            "",
            f"`python bench/loop_dynamics.py {result['args']}` on {result['date']} ({result['machine']}): "
            f"experiment `{result['experiment']}`, {result['cycles']} cycles; cycles 1-{k} against "
            f"{result['cycles'] - k + 1}-{result['cycles']}, pooled, 95 % intervals; "
            f"τ = {result['threshold']}.",
            "",
            f"| measure | cycles 1-{k} | last {k} cycles |",
            "|---|---|---|",
            f"| candidates | {first['candidates']} | {last['candidates']} |",
            f"| valid rate | {interval(first['valid'], True)} | {interval(last['valid'], True)} |",
            f"| mean first-epoch accuracy of valid programs | {interval(first['mean_accuracy'], False)} "
            f"| {interval(last['mean_accuracy'], False)} |",
            f"| C_t (share of candidates ≥ τ) | {interval(first['elite_concentration'], True)} "
            f"| {interval(last['elite_concentration'], True)} |",
            f"| admitted | {first['admitted']} | {last['admitted']} |",
            f"| rejected as near-duplicates | {100 * first['near_duplicate_share']:.0f} % "
            f"| {100 * last['near_duplicate_share']:.0f} % |",
            "",
            "Per cycle (valid / ≥ τ / admitted of the candidates): " + "; ".join(result["per_cycle"]) + ".",
            "",
            "Raw figures: `bench/results/loop_dynamics.json`.",
            SECTION_END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("ARCHLOOP_HOME") or Path.home() / ".archloop")
    )
    parser.add_argument("--cycles", type=int, default=3, help="how many cycles to pool at each end")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    path = args.home / "data" / "controller" / "ledger.sqlite3"
    if not path.exists():
        print(f"{path} does not exist: no controller has run under {args.home}", file=sys.stderr)
        return 2
    ledger = Ledger(path)
    rows = ledger.candidates(args.experiment)
    cycles = sorted({r.cycle for r in rows})
    if len(cycles) < 2 * args.cycles:
        print(
            f"experiment {args.experiment} has {len(cycles)} cycles with candidates; "
            f"--cycles {args.cycles} needs at least {2 * args.cycles}",
            file=sys.stderr,
        )
        return 2
    threshold = config.from_json(ledger.experiment(args.experiment).config_json).accuracy_threshold
    per_cycle = []
    for cycle in cycles:
        mine = [r for r in rows if r.cycle == cycle]
        good = sum(bool(r.valid) and r.accuracy >= threshold for r in mine)
        valid = sum(bool(r.valid) for r in mine)
        admitted = sum(r.decision == "admitted" for r in mine)
        per_cycle.append(f"{cycle}: {valid} / {good} / {admitted} of {len(mine)}")
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine(),
        "args": " ".join(sys.argv[1:]),
        "experiment": args.experiment,
        "cycles": len(cycles),
        "cycles_pooled": args.cycles,
        "threshold": threshold,
        "first": pooled([r for r in rows if r.cycle in cycles[: args.cycles]], threshold),
        "last": pooled([r for r in rows if r.cycle in cycles[-args.cycles :]], threshold),
        "per_cycle": per_cycle,
    }
    publish("loop_dynamics", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
