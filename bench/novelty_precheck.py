"""Novelty before training, measured: the embedded experiment with the pre-check off, then on, same seed.

    python bench/novelty_precheck.py [--cycles 3] [--candidates 24] [--seed 1] [--base-model REF]
        [--keep DIR] [--write]

Each arm is a whole `archloop run` (its own local stack and $ARCHLOOP_HOME, the shared corpus) of the
embedded experiment, `novelty_precheck` false then true; the arms run one after the other, never beside
each other. From each ledger: candidates, decided before training, trained for a later decision, valid,
admitted, the evaluator-seconds (every candidate's recorded evaluation time, the static screens
included) and the wall clock; and across the arms whether the same programs were generated and the
same ones admitted (the same seed gives the same first cycle; later cycles stay the same only while the
admissions, and so the adapters, do). The ratio on ÷ off of evaluator-seconds is the figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine, publish, run_experiment  # noqa: E402

START, END = "<!-- novelty-precheck:start -->", "<!-- novelty-precheck:end -->"


def _sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def arm_figures(ledger, name: str) -> dict:
    rows = ledger.candidates(name)
    evaluator_seconds = sum(r.eval_seconds or 0.0 for r in rows)
    return {
        "cycles": len({r.cycle for r in rows}),
        "candidates": len(rows),
        "decided_before_training": sum(r.decided_before_training for r in rows),
        "trained_for_a_later_decision": sum(r.trained_for_a_later_decision for r in rows),
        "valid": sum(bool(r.valid) for r in rows),
        "near_duplicates": sum(bool(r.near_dup_text_train or r.near_dup_text_gen) for r in rows),
        "admitted": sum(r.admitted for r in rows),
        "evaluator_seconds": round(evaluator_seconds, 1),
        # each program by its hash (the same program in both arms: the same hash)
        "programs": [[r.cycle, r.idx, _sha(r.code)] for r in rows],
        "admitted_programs": sorted(_sha(r.code) for r in rows if r.admitted),
        "verdicts": [[r.cycle, r.idx, str(r.decision or "")] for r in rows],
    }


def run_arm(precheck: bool, args: argparse.Namespace, work: Path) -> dict:
    from services.controller.ledger import Ledger

    name = f"precheck-{'on' if precheck else 'off'}"
    home = work / name
    home.mkdir(parents=True)
    config = {
        "name": name,
        "cycles": args.cycles,
        "candidates_per_cycle": args.candidates,
        "seed": args.seed,
        "base_model": args.base_model,
        "novelty_precheck": precheck,
    }
    seconds, exit_code = run_experiment(home, config, name, args.corpus)
    figures = arm_figures(Ledger(home / "data" / "controller" / "ledger.sqlite3"), name)
    return {"config": config, "seconds": round(seconds, 1), "exit_code": exit_code, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--base-model", default="", help="'' = the packaged tiny model")
    parser.add_argument("--corpus", type=Path, default=None, help="default: the local corpus")
    parser.add_argument("--keep", type=Path, default=None, help="keep each arm's home here")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.cycles < 1 or args.candidates < 1:
        print("--cycles and --candidates must be at least 1", file=sys.stderr)
        return 2
    from archloop.paths import corpus_dir

    args.corpus = (args.corpus or corpus_dir()).resolve()
    with tempfile.TemporaryDirectory(prefix="precheck-") as tmp:
        work = args.keep or Path(tmp)
        off = run_arm(False, args, work)
        print(json.dumps({"off": {k: v for k, v in off.items() if "programs" not in k}}), flush=True)
        on = run_arm(True, args, work)
        print(json.dumps({"on": {k: v for k, v in on.items() if "programs" not in k}}), flush=True)

    same_programs = off["programs"] == on["programs"]
    same_admitted = off["admitted_programs"] == on["admitted_programs"]
    # where the programs agree, every verdict but the one label (a near-duplicate that fails training:
    # rejected before training with the pre-check, invalid without) must agree
    same_cycles = sorted({c for c, _, _ in off["programs"]} & {c for c, _, _ in on["programs"]})

    def of_cycle(programs: list, cycle: int) -> list:
        return [p for p in programs if p[0] == cycle]

    agree = [c for c in same_cycles if of_cycle(off["programs"], c) == of_cycle(on["programs"], c)]
    differing = [
        [c, i, a, b]
        for (c, i, a), (_, _, b) in zip(off["verdicts"], on["verdicts"], strict=False)
        if c in agree and a != b and not (a == "invalid" and b == "rejected")
    ]
    ratio = on["evaluator_seconds"] / off["evaluator_seconds"] if off["evaluator_seconds"] else float("nan")
    results = {"off": off, "on": on, "same_programs": same_programs, "same_admitted": same_admitted,
               "cycles_with_the_same_programs": agree, "differing_verdicts": differing,
               "evaluator_seconds_ratio": ratio}  # fmt: skip
    lines = [
        START,
        "## Novelty before training: the pre-check off vs on",
        "",
        f"`python bench/novelty_precheck.py {' '.join(sys.argv[1:])}` — the embedded experiment, seed "
        f"{args.seed}, {args.cycles} cycles × {args.candidates} candidates, one arm after the other "
        f"({machine()}).",
        "",
        "| pre-check | candidates | decided before training | trained for a later decision | valid | "
        "near-duplicates | admitted | evaluator-seconds | wall clock |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("off", off), ("on", on)):
        lines.append(
            f"| {name} | {r['candidates']} | {r['decided_before_training']} | "
            f"{r['trained_for_a_later_decision']} | {r['valid']} | {r['near_duplicates']} | "
            f"{r['admitted']} | "
            f"{r['evaluator_seconds']:.0f} s | {r['seconds']:.0f} s |"
        )
    lines += [
        "",
        f"Evaluator-seconds on ÷ off: **{ratio:.2f}** (wall clock {on['seconds'] / off['seconds']:.2f}). "
        f"Same programs generated: {'yes' if same_programs else 'no'} (identical in cycles {agree}); "
        f"same programs admitted: {'yes' if same_admitted else 'no'}; verdicts that differ where the "
        f"programs agree (besides invalid → rejected before training): {len(differing)}.",
        "Raw figures: `bench/results/novelty_precheck.json`.",
        END,
    ]
    publish("novelty_precheck", results, "\n".join(lines), START, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
