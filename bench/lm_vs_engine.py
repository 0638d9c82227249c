"""Does the language model earn its place? The loop against searches without one, at equal evaluations.

    python bench/lm_vs_engine.py [--arms lm-full engine corpus-sample] [--seeds 1 2 3]
        [--cycles 4] [--engine-cycles 8] [--candidates 24] [--retrain-epochs 5] [--keep DIR] [--write]

Each arm is a whole `archloop run` of the embedded experiment with the arm's changes (its own local
stack and $ARCHLOOP_HOME, the shared corpus), the same cycles × candidates and the same seed; runs are
interleaved by seed (seed 1 of every arm, then seed 2, …) and never beside each other. Arms:
- lm-full: the embedded experiment as it is (the tiny model writes full programs; each cycle fine-tunes);
- lm-cyclic (not by default: time): the same with the cyclic temperature schedule, the LM arm that
  admitted the most in the earlier side-by-side (docs/benchmarks.md); the archive-edit arm needs
  tiny-coder-edits-v1, which is not packaged;
- engine: services/controller/configs/engine.yaml (verified mutation-engine edits, aging evolution);
- corpus-sample: services/controller/configs/corpus-sample.yaml (corpus programs drawn at random).

An evaluation is a trained candidate (the novelty pre-check's text duplicates are not trained, so an arm
makes fewer evaluations than candidates; the engine's children are mostly text near-duplicates of their
parent or siblings, so its arm runs --engine-cycles to reach as many evaluations; curves are compared at
evaluation counts every run reached). Per run, from its ledger: best-so-far first-epoch accuracy after
each evaluation (in the cycles' candidate order), evaluations, valid, admitted, wiring-new admitted (per
100 evaluations, per hour of the run's span), distinct wiring hashes, the best valid program and its
corpus percentile (archloop.leaderboard). Pooled per arm over seeds: Wilson intervals for shares, mean ±
t 95 % for best-so-far at fixed evaluation counts. Then each arm's best program (over its seeds) and the
corpus's best are trained again for --retrain-epochs epochs on the same split, seeds 0-2 (the
evaluator's protocol otherwise), so "best" is not a one-epoch accident. `--write` puts the section and
docs/img/lm_vs_engine.png in docs; raw figures go to bench/results/lm_vs_engine.json.
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

START, END = "<!-- lm-vs-engine:start -->", "<!-- lm-vs-engine:end -->"
FIGURE = ROOT / "docs" / "img" / "lm_vs_engine.png"
CONFIGS = ROOT / "services" / "controller" / "configs"
ARMS: dict[str, dict] = {
    "lm-full": {},
    "lm-cyclic": {
        "generation": {
            "temperature_schedule": "cyclic",
            "temperature_max": 0.9,
            "temperature_period_cycles": 4,
        }
    },
    "engine": {"file": "engine.yaml"},
    "corpus-sample": {"file": "corpus-sample.yaml"},
}
CHECKPOINTS = (25, 50, 60)  # evaluation counts the table reports best-so-far at (those every run reached)


def arm_config(arm: str, cycles: int, candidates: int, seed: int) -> dict:
    import yaml

    spec = dict(ARMS[arm])
    base = yaml.safe_load((CONFIGS / spec.pop("file")).read_text()) if "file" in spec else {}
    return {**base, **spec, "name": arm, "cycles": cycles, "candidates_per_cycle": candidates, "seed": seed}


def run_figures(home: Path, name: str, board) -> dict | None:
    """The run's figures from its ledger (None when it holds no completed experiment)."""
    from services.controller.creativity import RunSoFar, creativity_columns

    run = completed_run(home, name)
    if run is None:
        return None
    row, candidates = run
    columns = creativity_columns(candidates, RunSoFar())
    curve: list[float] = []
    for c in candidates:
        if c.valid is None or c.eval_status == "GENERATION_ERROR":
            continue  # not trained
        accuracy = c.accuracy if c.valid and c.accuracy is not None else 0.0
        curve.append(max(curve[-1], accuracy) if curve else accuracy)
    valid = [c for c in candidates if c.valid and c.accuracy is not None]
    best = max(valid, key=lambda c: c.accuracy or 0.0, default=None)
    return {
        "generated": len(candidates),
        "evaluations": len(curve),
        "valid": len(valid),
        "admitted": sum(bool(c.admitted) for c in candidates),
        "wiring_new_admitted": columns["wiring_new_admitted"],
        "distinct_wiring": columns["distinct_wiring_total"],
        "seconds": row.span_seconds,
        "curve": curve,
        "best": best.accuracy if best else math.nan,
        "best_code": best.code if best else "",
        "best_id": best.candidate_id if best else "",
        "best_percentile": board.percentile(best.accuracy) if best and len(board) else math.nan,
    }


def _t_interval(values: list[float]) -> str:
    from services.controller.stats import mean_t_interval

    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean, low, high = mean_t_interval(values)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _wilson(k: int, n: int) -> str:
    from services.controller.stats import wilson_interval

    if not n:
        return "–"
    p, low, high = wilson_interval(k, n)
    return f"{p:.0%} [{low:.0%}, {high:.0%}]"


def arm_lines(results: dict[str, list[dict]], reached: int) -> list[str]:
    checkpoints = [n for n in CHECKPOINTS if n <= reached] + ([reached] if reached not in CHECKPOINTS else [])
    head = " | ".join(f"best so far at {n} (mean [t 95 %])" for n in checkpoints)
    lines = [
        "| arm | runs | evaluations (a run) | valid of evaluations (Wilson 95 %) | admitted "
        "| wiring-new admitted | … per 100 evaluations | … per hour (mean ± sd) | distinct wirings (a run) "
        f"| {head} "
        "| best (corpus percentile) | run span (mean) |",
        "|" + "---|" * (11 + len(checkpoints)),
    ]
    for arm, runs in results.items():
        evaluations = sum(r["evaluations"] for r in runs)
        new = sum(r["wiring_new_admitted"] for r in runs)
        per_hour = [3600 * r["wiring_new_admitted"] / r["seconds"] for r in runs if r["seconds"]]
        hour = (
            f"{statistics.mean(per_hour):.1f} ± {statistics.stdev(per_hour):.1f}"
            if len(per_hour) > 1
            else "–"
        )
        at = [_t_interval([r["curve"][n - 1] for r in runs if len(r["curve"]) >= n]) for n in checkpoints]
        top = max(runs, key=lambda r: -1 if math.isnan(r["best"]) else r["best"])
        best = "–" if math.isnan(top["best"]) else f"{top['best']:.3f} (p{top['best_percentile']:.1f})"
        lines.append(
            f"| {arm} | {len(runs)} | {' / '.join(str(r['evaluations']) for r in runs)} "
            f"| {_wilson(sum(r['valid'] for r in runs), evaluations)} | {sum(r['admitted'] for r in runs)} "
            f"| {new} | {100 * new / evaluations:.1f} | {hour} "
            f"| {' / '.join(str(r['distinct_wiring']) for r in runs)} | {' | '.join(at)} | {best} "
            f"| {statistics.mean(r['seconds'] for r in runs):.0f} s |"
        )
    return lines


def goal_lines(results: dict[str, list[dict]], reached: int, lm: str = "lm-full") -> list[str]:
    """The issue's goal, read off the pooled curves: the LM arm's mean best-so-far at or above the
    engine's at every evaluation count from 50 to the last every run reached."""
    if lm not in results or "engine" not in results or reached < 50:
        return []

    def mean_at(arm: str, n: int) -> float:
        return statistics.mean(r["curve"][n - 1] for r in results[arm])

    behind = [n for n in range(50, reached + 1) if mean_at(lm, n) < mean_at("engine", n)]
    lm_rate = sum(r["wiring_new_admitted"] for r in results[lm]) / sum(r["evaluations"] for r in results[lm])
    engine_rate = sum(r["wiring_new_admitted"] for r in results["engine"]) / sum(
        r["evaluations"] for r in results["engine"]
    )
    return [
        f"Goal 1 (the LM arm's mean best-so-far ≥ engine-only's at every evaluation count from 50 to "
        f"{reached}): **{'met' if not behind else 'not met'}**"
        + (f" (behind at {len(behind)} of {reached - 49} counts, from {behind[0]})." if behind else "."),
        f"Goal 2 (wiring-new admissions per 100 evaluations ≥ engine-only's): **"
        f"{'met' if lm_rate >= engine_rate else 'not met'}** "
        f"({100 * lm_rate:.1f} against {100 * engine_rate:.1f}).",
    ]


def retrain(programs: dict[str, str], epochs: int, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, list]:
    """Each program ({label: code}) trained for `epochs` on the embedded protocol's split, once per
    protocol seed, by the real evaluator: {label: [accuracy or None per seed]}."""
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox
    from tools.corpus_leaderboard import embedded_protocol

    base = embedded_protocol()
    out: dict[str, list] = {label: [] for label in programs}
    with tempfile.TemporaryDirectory(prefix="lm-vs-engine-retrain-") as work:
        box = Sandbox(Path(work) / "jobs", slots=1)
        box.start()
        try:
            evaluator = Evaluator(box, Path(work) / "data")
            for label, code in programs.items():
                for seed in seeds:
                    limit = base["time_limit_seconds"] * epochs
                    protocol = Protocol(
                        **{**base, "epochs": epochs, "seed": seed, "time_limit_seconds": limit}
                    )
                    result = evaluator.evaluate(f"{label}-s{seed}", code, protocol)
                    out[label].append(result.accuracy if result.status == "OK" else None)
        finally:
            box.stop()
    return out


def retrain_lines(retrained: dict[str, list], epochs: int) -> list[str]:
    lines = [f"| program | accuracy after {epochs} epochs, seeds 0 / 1 / 2 | mean |", "|---|---|---|"]
    for label, accuracies in retrained.items():
        shown = " / ".join("–" if a is None else f"{a:.3f}" for a in accuracies)
        done = [a for a in accuracies if a is not None]
        lines.append(
            f"| {label} | {shown} | {statistics.mean(done):.3f} |" if done else f"| {label} | {shown} | – |"
        )
    return lines


def figure(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, runs in results.items():
        reached = min(len(r["curve"]) for r in runs)
        xs = list(range(1, reached + 1))
        mean = [statistics.mean(r["curve"][n - 1] for r in runs) for n in xs]
        line = ax.step(xs, mean, where="post", label=f"{arm} (mean of {len(runs)})")[0]
        low = [min(r["curve"][n - 1] for r in runs) for n in xs]
        high = [max(r["curve"][n - 1] for r in runs) for n in xs]
        ax.fill_between(xs, low, high, step="post", alpha=0.15, color=line.get_color())
    ax.set_xlabel("evaluations (trained candidates)")
    ax.set_ylabel("best first-epoch accuracy so far")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Best so far against evaluations (band: the seeds' range)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arms", nargs="+", default=["lm-full", "engine", "corpus-sample"], choices=list(ARMS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cycles", type=int, default=4, help="4 × 24: an LM run trains ~60 (the pre-check)")
    parser.add_argument(
        "--engine-cycles",
        type=int,
        default=8,
        help="the engine arm's cycles: the pre-check decides most of its children before training, "
        "so it needs more candidates for as many evaluations",
    )
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--retrain-epochs", type=int, default=5, help="0 = no retraining")
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep (and resume from) each run's home here")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    corpus = built_corpus(args.corpus)
    if corpus is None:
        return 2
    from archloop import leaderboard
    from archloop.corpus import training_programs

    entries, _protocol = leaderboard.load()
    programs = training_programs(corpus)
    board, _missing = leaderboard.for_corpus(programs, entries)
    work = args.keep or Path(tempfile.mkdtemp(prefix="lm-vs-engine-"))
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            cycles = args.engine_cycles if arm == "engine" else args.cycles
            name = f"{arm}-s{seed}" + (f"-c{cycles}" if cycles != args.cycles else "")
            home = work / name
            figures = run_figures(home, name, board)
            if figures is None:
                home.mkdir(parents=True, exist_ok=True)
                _seconds, code = run_experiment(
                    home, arm_config(arm, cycles, args.candidates, seed), name, corpus
                )
                figures = run_figures(home, name, board)
                if code != 0 or figures is None:
                    return 1
            print(f"{name}: {figures['evaluations']} evaluations, best {figures['best']:.3f}, "
                  f"{figures['admitted']} admitted, {figures['seconds']:.0f} s", flush=True)  # fmt: skip
            results[arm].append({"seed": seed, **figures})
    reached = min(len(r["curve"]) for runs in results.values() for r in runs)
    retrained: dict[str, list] = {}
    if args.retrain_epochs:
        chosen = {}
        for arm, runs in results.items():
            top = max(runs, key=lambda r: -1.0 if math.isnan(r["best"]) else r["best"])
            if top["best_code"]:
                chosen[f"{arm}: {top['best_id']}"] = top["best_code"]
        corpus_best = max(
            (m for m in programs if (e := entries.get(leaderboard.code_sha256(programs[m]))) and e.accuracy),
            key=lambda m: entries[leaderboard.code_sha256(programs[m])].accuracy or 0.0,
        )
        chosen[f"corpus best: {corpus_best}"] = programs[corpus_best]
        retrained = retrain(chosen, args.retrain_epochs)
    if args.write:
        figure(results, FIGURE)
    command = f"`python bench/lm_vs_engine.py {' '.join(sys.argv[1:])}` ({machine()})"
    lines = [START, "## Does the language model earn its place? The loop against searches without one", "",
             f"{command}: the embedded experiment, {args.cycles} × {args.candidates} candidates per run, "
             f"seeds {', '.join(map(str, args.seeds))}, each run alone; every run reached {reached} "
             f"evaluations. The corpus on the same protocol: best {board.best:.3f}, 99th percentile "
             f"{board.quantile(0.99):.3f}.",
             "", *arm_lines(results, reached), "", *goal_lines(results, reached), "",
             "![Best so far against evaluations](img/lm_vs_engine.png)", ""]  # fmt: skip
    if retrained:
        lines += [f"Each arm's best program and the corpus's best, trained again for {args.retrain_epochs} "
                  "epochs (the embedded protocol's split, protocol seeds 0, 1, 2):", "",
                  *retrain_lines(retrained, args.retrain_epochs), ""]  # fmt: skip
    lines += ["Raw figures: `bench/results/lm_vs_engine.json`.", END]
    for runs in results.values():
        for r in runs:
            r.pop("best_code")
    publish(
        "lm_vs_engine", {"runs": results, "retrained": retrained}, "\n".join(lines), START, END, args.write
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
