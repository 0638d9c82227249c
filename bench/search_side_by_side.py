"""Search strategies side by side: the same seed and the same wall-clock budget, one experiment each.

    python bench/search_side_by_side.py [--arms full-fixed,delta-archive,factor-archive]
        [--base-model REF] [--edit-base-model REF] [--budget-seconds 600] [--candidates 12]
        [--seed 1] [--keep DIR] [--write]

Each arm is a whole `archloop run` (its own local stack and $ARCHLOOP_HOME, the shared corpus) of the
embedded experiment with the arm's changes, `wall_clock_budget_seconds` = --budget-seconds and a cycle
cap it does not reach; the arms run one after another, never beside each other (they would share the
two cores). Arms:
- full-fixed: full programs from the plain prompt (the embedded experiment as it is), constant T;
- full-cyclic: the same with the cyclic temperature schedule (T 0.5 → 0.9 → 0.5 over 4 cycles);
- delta-archive / factor-archive: edits of parents drawn from the archive (MAP-Elites over parameter
  band × depth band × factor), with `edit_pair_share` 0.25 of edit pairs in each fine-tune.

Per arm, from its ledger: cycles run, candidates, valid (Wilson 95 %), admitted, best and mean
first-epoch accuracy of the valid programs, and diversity: the mean pairwise exact token J of the
admitted programs and of the valid ones (the novelty service's shingles), the share of distinct layer
sequences among the valid, and the archive cells the admitted programs fill. The figures say which
arm wins on what; nothing is tuned to make one win.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.base_model_quality import _shingles  # noqa: E402
from bench.report import machine, publish, run_experiment  # noqa: E402
from services.controller.stats import wilson_interval  # noqa: E402

START, END = "<!-- search-side-by-side:start -->", "<!-- search-side-by-side:end -->"
EDIT_ARM = {"generation": {"parent_policy": "map_elites"}, "edit_pair_share": 0.25}
ARMS: dict[str, dict] = {
    "full-fixed": {"generation": {"mode": "full"}},
    "full-cyclic": {
        "generation": {
            "mode": "full",
            "temperature_schedule": "cyclic",
            "temperature_max": 0.9,
            "temperature_period_cycles": 4,
        }
    },
    "delta-archive": {**EDIT_ARM, "generation": {**EDIT_ARM["generation"], "mode": "delta"}},
    "factor-archive": {**EDIT_ARM, "generation": {**EDIT_ARM["generation"], "mode": "factor"}},
}


def mean_pairwise_j(codes: list[str]) -> float | None:
    from services.novelty.fingerprint import exact_jaccard

    shingles = [_shingles(code) for code in codes]
    pairs = [exact_jaccard(a, b) for a, b in itertools.combinations(shingles, 2)]
    return sum(pairs) / len(pairs) if pairs else None


def run_arm(name: str, args: argparse.Namespace, work: Path) -> dict:
    """One experiment of the arm under its own home; its figures from the ledger."""
    from services.controller.ledger import Ledger

    home = work / name
    home.mkdir(parents=True)
    config = {
        "name": name,
        "cycles": 1000,
        "candidates_per_cycle": args.candidates,
        "seed": args.seed,
        "wall_clock_budget_seconds": args.budget_seconds,
        "base_model": args.base_model if name.startswith("full") else args.edit_base_model,
        **ARMS[name],
    }
    seconds, exit_code = run_experiment(home, config, name, args.corpus)
    figures = arm_figures(Ledger(home / "data" / "controller" / "ledger.sqlite3"), name)
    return {"config": config, "seconds": round(seconds, 1), "exit_code": exit_code, **figures}


def arm_figures(ledger, name: str) -> dict:
    """An experiment's figures from its ledger."""
    from services.controller import archive

    rows = ledger.candidates(name)
    valid = [r for r in rows if r.valid]
    admitted = [r for r in rows if r.decision == "admitted"]
    wired = [r for r in valid if r.topology_sha256]
    accuracies = [r.accuracy for r in valid]
    share, low, high = wilson_interval(len(valid), len(rows))
    return {
        "cycles": len({r.cycle for r in rows}),
        "candidates": len(rows),
        "valid": len(valid),
        "valid_share": share,
        "valid_ci": [low, high],
        "admitted": len(admitted),
        "best_accuracy": max(accuracies, default=None),
        "mean_valid_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
        "mean_admitted_accuracy": (sum(r.accuracy for r in admitted) / len(admitted) if admitted else None),
        "admitted_pairwise_j": mean_pairwise_j([r.code for r in admitted]),
        "valid_pairwise_j": mean_pairwise_j([r.code for r in valid]),
        "valid_wiring_share": (len({r.topology_sha256 for r in wired}) / len(wired) if wired else None),
        "admitted_cells": len({archive.cell_of(r.code, r.param_count or 0, r.factor) for r in admitted}),
        "temperatures": [c.temperature for c in ledger.cycles(name)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="full-fixed,delta-archive,factor-archive")
    parser.add_argument("--base-model", default="", help="'' = the packaged tiny model")
    parser.add_argument(
        "--edit-base-model", default=None, help="the delta / factor arms' base model [default: --base-model]"
    )
    parser.add_argument("--budget-seconds", type=float, default=600.0)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", type=Path, default=None, help="default: the local corpus")
    parser.add_argument("--keep", type=Path, default=None, help="keep each arm's home here")
    parser.add_argument("--write", action="store_true")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other arms of bench/results/search_side_by_side.json"
    )
    args = parser.parse_args()
    from archloop.paths import corpus_dir

    args.corpus = (args.corpus or corpus_dir()).resolve()
    if args.edit_base_model is None:
        args.edit_base_model = args.base_model
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"--arms: {unknown} are not among {list(ARMS)}", file=sys.stderr)
        return 2
    if args.budget_seconds <= 0:
        print("--budget-seconds must be positive", file=sys.stderr)
        return 2
    previous = ROOT / "bench" / "results" / "search_side_by_side.json"
    results = json.loads(previous.read_text()) if args.merge and previous.exists() else {}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        work = args.keep or Path(tmp)
        for arm in arms:
            results[arm] = run_arm(arm, args, work)
            print(json.dumps({arm: results[arm]}, default=str), flush=True)

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    def model(reference: str) -> str:
        return Path(reference).name if reference else "archloop-tiny-coder"

    lines = [
        START,
        "## Search side by side: full programs vs edits of archive parents",
        "",
        f"`python bench/search_side_by_side.py {' '.join(sys.argv[1:])}` — seed {args.seed}, "
        f"{args.candidates} candidates a cycle, {args.budget_seconds:.0f} s wall clock per arm "
        f"({machine()}).",
        "",
        "| arm | base model | cycles | candidates | valid (Wilson 95 %) | admitted | best acc. | "
        "mean acc. (valid) | mean acc. (admitted) | pairwise J (admitted) | pairwise J (valid) | "
        "distinct wirings (valid) | cells (admitted) | wall clock |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = {arm: results[arm] for arm in ARMS if arm in results}
    for arm, r in results.items():
        lines.append(
            f"| {arm} | {model(r['config']['base_model'])} | {r['cycles']} | {r['candidates']} | "
            f"{pct(r['valid_share'])} "
            f"[{pct(r['valid_ci'][0])}, {pct(r['valid_ci'][1])}] | {r['admitted']} | "
            f"{num(r['best_accuracy'])} | "
            f"{num(r['mean_valid_accuracy'])} | {num(r['mean_admitted_accuracy'])} | "
            f"{num(r['admitted_pairwise_j'])} | {num(r['valid_pairwise_j'])} | "
            f"{pct(r.get('valid_wiring_share'))} | "
            f"{r['admitted_cells']} | {r['seconds']:.0f} s |"
        )
    lines += [
        "",
        "Lower pairwise J is more diverse. Raw figures: `bench/results/search_side_by_side.json`.",
        END,
    ]
    publish("search_side_by_side", results, "\n".join(lines), START, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
