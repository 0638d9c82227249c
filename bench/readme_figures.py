"""The README's measured figures, from runs of the current defaults: the embedded run (what `make run` runs)
and the longer run (services/controller/configs/embedded-long.yaml, 8 cycles × 12).

    python bench/readme_figures.py [--keep DIR] [--corpus DIR] [--write]

Each run is a whole `archloop run` under its own $ARCHLOOP_HOME in DIR (a completed one there is read
again, not rerun), alone on the machine. From each ledger: wall clock (the experiment's events), per
cycle the candidates generated, those the novelty pre-check decided before training, the valid rate of
the trained and of the generated (Wilson 95 %), mean and best first-epoch accuracy of the valid, the
share ≥ τ, admissions and the proxy audit's Spearman ρ; for the longer run, its first three cycles pooled
against its last three (bench/loop_dynamics.pooled: rates over every generated candidate, a pre-check
rejection counted as not valid). `--write` replaces the README's block between the readme-figures
markers; raw figures go to bench/results/readme_figures.json. The install and corpus-build minutes of a
fresh clone are bench/first_run.sh's (docs/benchmarks.md "A newcomer's first run").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loop_dynamics import pooled  # noqa: E402
from bench.report import built_corpus, completed_run, machine, run_experiment, write_section  # noqa: E402
from services.controller import config as experiment_config  # noqa: E402
from services.controller import report  # noqa: E402
from services.controller.ledger import Ledger  # noqa: E402

START, END = "<!-- readme-figures:start -->", "<!-- readme-figures:end -->"
README = ROOT / "README.md"
RUNS = {"embedded": {}, "embedded-long": {"name": "embedded-long", "cycles": 8, "candidates_per_cycle": 12}}


def figures(home: Path, name: str) -> dict:
    """What the README says of one completed run."""
    ledger = Ledger(home / "data" / "controller" / "ledger.sqlite3")
    try:
        row = ledger.experiment(name)
        config = experiment_config.from_json(row.config_json)
        threshold = config.accuracy_threshold
        cycles = report.cycle_rows(ledger, name, threshold)
        events = ledger.events(name)
        candidates = ledger.candidates(name)
    finally:
        ledger.close()
    span = events[-1].occurred_at.ToDatetime() - events[0].occurred_at.ToDatetime() if events else None
    seconds = span.total_seconds() if span is not None else float("nan")
    out = {
        "name": name,
        "cycles": len(cycles),
        "candidates_per_cycle": config.candidates_per_cycle,
        "temperature": config.generation.decoding.temperature,
        "seed": config.seed,
        "precheck": config.novelty_precheck,
        "promotion_top_k": config.promotion.top_k,
        "threshold": threshold,
        "seconds": seconds,
        "per_cycle": [
            {
                key: c.get(key)
                for key in (
                    "cycle",
                    "generated",
                    "decided_before_training",
                    "valid",
                    "valid_fraction",
                    "valid_ci_low",
                    "valid_ci_high",
                    "valid_of_generated",
                    "mean_accuracy",
                    "best_accuracy",
                    "fraction_above_threshold",
                    "admitted",
                    "audit_spearman",
                    "audit_warning",
                    "duration_seconds",
                )
            }
            for c in cycles
        ],
    }
    if len(cycles) >= 6:
        numbers = [c["cycle"] for c in cycles]
        out["first"] = pooled([c for c in candidates if c.cycle in numbers[:3]], threshold)
        out["last"] = pooled([c for c in candidates if c.cycle in numbers[-3:]], threshold)
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.0f}"


def _two(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def _each(rows: list[dict], key: str, fmt=str) -> str:
    return " / ".join(fmt(r[key]) for r in rows)


def _interval(x: tuple, pct: bool) -> str:
    scale, digits, unit = (100, 1, " %") if pct else (1, 3, "")
    return f"{scale * x[0]:.{digits}f}{unit} [{scale * x[1]:.{digits}f}, {scale * x[2]:.{digits}f}]"


def _audit(r: dict) -> str:
    rho = r["audit_spearman"]
    return (
        "–" if rho is None or rho != rho else f"{rho:.2f}" + (" (warned)" if r["audit_warning"] == 1 else "")
    )


def embedded_text(f: dict) -> str:
    rows = f["per_cycle"]
    setting = (
        f"{f['cycles']} cycles × {f['candidates_per_cycle']} at T {f['temperature']:g}, seed {f['seed']}, "
        f"the novelty pre-check {'on' if f['precheck'] else 'off'}, "
        f"promotion of the top {f['promotion_top_k']}"
    )
    admitted = sum(r["admitted"] for r in rows)
    generated = sum(r["generated"] for r in rows)
    return " ".join([
        f"**The embedded run** ({setting}; {f['seconds'] / 60:.1f} min from the experiment's start",
        "to its end):",
        f"admitted **{admitted} of {generated}** ({_each(rows, 'admitted')} per cycle);",
        f"{sum(r['decided_before_training'] for r in rows)} were rejected as text near-duplicates before",
        f"training ({_each(rows, 'decided_before_training')}).",
        f"Valid: {_each(rows, 'valid_fraction', _pct)} %",
        f"of the trained (Wilson lower bounds {_each(rows, 'valid_ci_low', _pct)} %),",
        f"{_each(rows, 'valid_of_generated', _pct)} % of the generated (a pre-check rejection counted as not",
        f"valid); mean first-epoch accuracy of the valid {_each(rows, 'mean_accuracy', _two)}, best",
        f"{_each(rows, 'best_accuracy', _two)}; share ≥ τ {_each(rows, 'fraction_above_threshold', _pct)} %.",
        "The proxy audit on each cycle's promoted programs (epoch 1 against epoch 5), Spearman ρ:",
        ", ".join(_audit(r) for r in rows) + ".",
    ])  # fmt: skip


def long_text(f: dict) -> str:
    rows = f["per_cycle"]

    def cycle(r: dict) -> str:
        above = round(r["fraction_above_threshold"] * r["valid"]) if r["valid"] else 0
        return f"{r['cycle']}: {r['valid']} / {above} / {r['admitted']} of {r['generated']}"

    first, last = f["first"], f["last"]

    def both(key: str, pct: bool) -> str:
        return f"{_interval(first[key], pct)} vs {_interval(last[key], pct)}"

    return " ".join([
        f"**The longer run** ({f['cycles']} cycles × {f['candidates_per_cycle']}, the same defaults;",
        f"{f['seconds'] / 60:.1f} min): admitted {sum(r['admitted'] for r in rows)} of",
        f"{sum(r['generated'] for r in rows)},",
        f"{sum(r['decided_before_training'] for r in rows)} rejected before",
        "training; per cycle valid / ≥ τ / admitted:", "; ".join(cycle(r) for r in rows) + ".",
        "First three cycles against the last three (pooled, 95 % intervals, over every generated candidate):",
        f"valid {both('valid', True)};",
        f"mean first-epoch accuracy of the valid {both('mean_accuracy', False)};",
        f"C_t {both('elite_concentration', True)}; rejected as near-duplicates",
        f"{100 * first['near_duplicate_share']:.0f} % vs {100 * last['near_duplicate_share']:.0f} %.",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="run (or find) the experiments here [default: a temp dir]")
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--write", action="store_true", help="replace the README's figures block")
    args = parser.parse_args()
    corpus = built_corpus(args.corpus)
    if corpus is None:
        return 2
    base = args.keep or Path(tempfile.mkdtemp(prefix="archloop-readme-"))
    results = {}
    for name, config in RUNS.items():
        home = base / name
        home.mkdir(parents=True, exist_ok=True)
        if completed_run(home, name) is None:
            _, code = run_experiment(home, config, name, corpus)
            if code != 0:
                return 1
        results[name] = figures(home, name)
        print(json.dumps(results[name])[:300], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    when = datetime.now(UTC).date().isoformat()
    header = (
        "Figures of the current defaults: `python bench/readme_figures.py --keep DIR --write` "
        f"({machine()}, {when}, commit {commit.stdout.strip()}; each run alone)."
    )
    text = "\n".join(
        [START, header, "", embedded_text(results["embedded"]), "", long_text(results["embedded-long"]), END]
    )
    out = ROOT / "bench" / "results" / "readme_figures.json"
    out.write_text(json.dumps(results, indent=2))
    print(text)
    if args.write:
        write_section(text, START, END, README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
