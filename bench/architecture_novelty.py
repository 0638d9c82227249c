"""Architecture novelty in the admission rule, measured: the embedded experiment with the text-only rule
(`architecture_novelty: record`) against the rule that requires a new wiring (`require`), same seeds,
each run alone on the machine; and one long run's wiring-new share, first cycles against last.

    python bench/architecture_novelty.py [--seeds 1 2 3] [--arms record require] [--cycles 3]
        [--candidates 24] [--temperature T] [--keep DIR] [--write]
    python bench/architecture_novelty.py --long ARM [--cycles 8] [--seeds 1] [--keep DIR] [--write]

Runs are interleaved by seed (seed 1 of every arm, then seed 2, …) so that the machine's drift falls
on both arms alike; with `--keep` a run whose home already holds a completed experiment is read, not
run again (a long measurement resumes). Per run, from its ledger: the trained candidates, the valid,
the admitted, the **wiring-new admitted** (no corpus program, admitted candidate or earlier valid
candidate of its cycle has its wiring hash: services/controller/creativity.py), the distinct wiring
hashes of the valid, the best admitted accuracy, and the run's span (the experiment's creation to its
end), so rates per hour compare runs of different lengths. `--write` puts the section in
docs/benchmarks.md; raw figures go to bench/results/architecture_novelty*.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import built_corpus, completed_run, machine, publish, run_experiment  # noqa: E402

START, END = "<!-- architecture-novelty:start -->", "<!-- architecture-novelty:end -->"
LONG_START, LONG_END = "<!-- architecture-novelty-long:start -->", "<!-- architecture-novelty-long:end -->"


def run_figures(home: Path, name: str) -> dict | None:
    """The run's figures from its ledger (None when it holds no completed experiment)."""
    run = completed_run(home, name)
    if run is None:
        return None
    row, candidates = run
    cycles = sorted({c.cycle for c in candidates})
    per_cycle = [_counts([c for c in candidates if c.cycle == cycle]) for cycle in cycles]
    return {**_counts(candidates), "seconds": row.span_seconds, "cycles": per_cycle}


def _counts(candidates: list) -> dict:
    """The run's (or a cycle's) counts: the report's creativity columns over these candidates alone."""
    from services.controller.creativity import RunSoFar, creativity_columns

    columns = creativity_columns(candidates, RunSoFar())
    admitted = [c for c in candidates if c.admitted]
    accuracies = [c.accuracy for c in admitted if c.accuracy is not None]
    return {
        "generated": len(candidates),
        "trained": columns["evaluations_total"],
        "valid": sum(bool(c.valid) for c in candidates),
        "wiring_recorded": columns["wiring_recorded"],
        "wiring_new_valid": columns["wiring_new_valid"],
        "admitted": len(admitted),
        "wiring_new_admitted": columns["wiring_new_admitted"],
        "distinct_wiring": columns["distinct_wiring_total"],
        "best_admitted": max(accuracies) if accuracies else math.nan,
    }


def _wilson(k: int, n: int) -> str:
    from services.controller.stats import wilson_interval

    if not n:
        return "–"
    p, low, high = wilson_interval(k, n)
    return f"{p:.0%} [{low:.0%}, {high:.0%}]"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def corpus_board(corpus: Path):
    """The corpus's leaderboard on the embedded protocol (archloop.leaderboard's packaged table)."""
    from archloop import leaderboard
    from archloop.corpus import training_programs

    entries, _protocol = leaderboard.load()
    board, _missing = leaderboard.for_corpus(training_programs(corpus), entries)
    return board


def _standing(accuracy: float, board) -> str:
    if math.isnan(accuracy):
        return "–"
    return f"{accuracy:.3f} (p{board.percentile(accuracy):.1f})" if len(board) else f"{accuracy:.3f}"


def board_line(board) -> str:
    if not len(board):
        return "The corpus leaderboard table is missing: `archloop corpus leaderboard` makes it."
    return (
        f"The corpus on the same protocol (`archloop corpus leaderboard`, {len(board):,} programs trained): "
        f"best {board.best:.3f}, 99th percentile {board.quantile(0.99):.3f}, 90th {board.quantile(0.9):.3f}."
    )


def arm_lines(arms: dict[str, list[dict]], board) -> list[str]:
    lines = [
        "| arm | runs | valid / trained | wiring-new of valid (Wilson 95 %) | distinct wiring (valid, a run) "
        "| admitted | wiring-new admitted (share, Wilson 95 %) | wiring-new admitted per hour (mean ± sd) "
        "| admitted per hour | best admitted (corpus percentile) | run span |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("trained", "valid", "wiring_recorded", "wiring_new_valid", "admitted", "wiring_new_admitted")
    for arm, runs in arms.items():
        total = {key: sum(r[key] for r in runs) for key in keys}
        per_hour = [3600 * r["wiring_new_admitted"] / r["seconds"] for r in runs]
        admitted_hour = [3600 * r["admitted"] / r["seconds"] for r in runs]
        best = max((r["best_admitted"] for r in runs if not math.isnan(r["best_admitted"])), default=math.nan)
        lines.append(
            f"| {arm} | {len(runs)} | {total['valid']} / {total['trained']} "
            f"| {total['wiring_new_valid']} ({_wilson(total['wiring_new_valid'], total['wiring_recorded'])}) "
            f"| {' / '.join(str(r['distinct_wiring']) for r in runs)} | {total['admitted']} "
            f"| {total['wiring_new_admitted']} ({_wilson(total['wiring_new_admitted'], total['admitted'])}) "
            f"| {_mean_sd(per_hour)} | {_mean_sd(admitted_hour)} | {_standing(best, board)} "
            f"| {statistics.mean(r['seconds'] for r in runs):.0f} s |"
        )
    return lines


def long_lines(run: dict, first: int = 3) -> list[str]:
    cycles = run["cycles"]
    head, tail = cycles[:first], cycles[-first:]

    def pooled(part: list[dict]) -> str:
        return _wilson(sum(c["wiring_new_valid"] for c in part), sum(c["wiring_recorded"] for c in part))

    lines = [
        "| cycle | valid / trained | wiring-new of valid (Wilson 95 %) | admitted | wiring-new admitted |",
        "|---|---|---|---|---|",
    ]
    for number, c in enumerate(cycles, start=1):
        lines.append(
            f"| {number} | {c['valid']} / {c['trained']} "
            f"| {_wilson(c['wiring_new_valid'], c['wiring_recorded'])} "
            f"| {c['admitted']} | {c['wiring_new_admitted']} |"
        )
    lines += ["", f"Wiring-new share of the valid: cycles 1–{len(head)} {pooled(head)}, "
                  f"cycles {len(cycles) - len(tail) + 1}–{len(cycles)} {pooled(tail)}."]  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--arms", nargs="+", default=["record", "require"], choices=["off", "record", "require"]
    )
    parser.add_argument(
        "--long", choices=["record", "require"], default=None, help="one long run of this arm"
    )
    parser.add_argument("--cycles", type=int, default=0, help="default: 3, or 8 with --long")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature [the embedded 0.5]"
    )
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep (and resume from) each run's home here")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    cycles = args.cycles or (8 if args.long else 3)
    arms = [args.long] if args.long else args.arms
    seeds = args.seeds[:1] if args.long else args.seeds

    corpus = built_corpus(args.corpus)
    if corpus is None:
        return 2
    from archloop.corpus import read_architectures

    if not read_architectures(corpus):
        print(f"{corpus} has no architecture graphs: run `archloop corpus structure` first", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="architecture-novelty-"))
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            name = f"{arm}-s{seed}-c{cycles}" + (f"-t{args.temperature:g}" if args.temperature else "")
            home = work / name
            figures = run_figures(home, name)
            if figures is None:
                home.mkdir(parents=True, exist_ok=True)
                config = {"cycles": cycles, "candidates_per_cycle": args.candidates, "seed": seed,
                          "architecture_novelty": arm}  # fmt: skip
                if args.temperature:
                    config["generation"] = {"decoding": {"temperature": args.temperature}}
                _seconds, code = run_experiment(home, config, name, corpus)
                figures = run_figures(home, name)
                if code != 0 or figures is None:
                    return 1
            print(f"{name}: {figures['admitted']} admitted, {figures['wiring_new_admitted']} wiring-new, "
                  f"{figures['seconds']:.0f} s", flush=True)  # fmt: skip
            results[arm].append({"seed": seed, **figures})

    command = f"`python bench/architecture_novelty.py {' '.join(sys.argv[1:])}` ({machine()})"
    if args.long:
        run = results[args.long][0]
        lines = [LONG_START, "## Architecture novelty over a long run: first cycles against last", "",
                 f"{command}: the embedded experiment, `architecture_novelty: {args.long}`, seed {seeds[0]}, "
                 f"{cycles} × {args.candidates}, {run['seconds']:.0f} s.", "", *long_lines(run),
                 LONG_END]  # fmt: skip
        publish("architecture_novelty_long", results, "\n".join(lines), LONG_START, LONG_END, args.write)
        return 0
    tag = f"-t{args.temperature:g}" if args.temperature else ""
    start, end = (START.replace(":start", f"{tag}:start"), END.replace(":end", f"{tag}:end"))
    title = "## Architecture novelty: text-only rule against a new wiring required" + (
        f" (temperature {args.temperature:g})" if tag else ""
    )
    lines = [start, title, "",
             f"{command}: the embedded experiment, {cycles} × {args.candidates} per run, seeds "
             f"{', '.join(map(str, seeds))}"
             + (f", sampling temperature {args.temperature:g}" if args.temperature else "")
             + ", each run alone; `record` is the text-only rule (the "
             "architecture recorded, not used), `require` rejects a known wiring (with the novelty "
             "pre-check, before training: those count in the wiring columns, not in trained).", "",
             *arm_lines(results, corpus_board(corpus)), "", board_line(corpus_board(corpus)), "",
             f"Raw figures: `bench/results/architecture_novelty{tag}.json`.", end]  # fmt: skip
    publish(f"architecture_novelty{tag}", results, "\n".join(lines), start, end, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
