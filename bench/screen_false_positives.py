"""The static screen's false positives on LEMUR: real models it rejects that build and train.

    python bench/screen_false_positives.py [--sample 150] [--rejected-sample 0] [--write]

Every LEMUR model file that parses and meets the contract is screened with the old policy (policy-v1.yaml,
what the corpora lemur-v2/-v3 were built with) and the current one (policy.yaml). Whether a rejected file
"builds and trains" is asked of the sandbox with the screen bypassed (the runner's plain loop: Net(...),
a forward pass, train_setup, one epoch on 256 digits images; the budget is not applied): every file the
current policy still rejects (or a seeded sample of them with `--rejected-sample N`), and a seeded
sample of those only the old one rejected (fractions with Wilson intervals, scaled to the counts). The
remaining rejections are grouped by rule, so each can be read as harm or as style. With `--write` the
table goes to docs/benchmarks.md ("Screen false positives").
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop.lemur import iter_model_sources, lemur_wheel  # noqa: E402
from bench.report import machine, publish  # noqa: E402
from services.evaluator.evaluation import Protocol  # noqa: E402
from services.evaluator.sandbox import Sandbox  # noqa: E402
from services.evaluator.screen import POLICY_V1_PATH, Policy, check_contract, parse_source, screen  # noqa: E402

START, END = "<!-- screen-false-positives:start -->", "<!-- screen-false-positives:end -->"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def trains(sandbox: Sandbox, code: str) -> bool:
    """The runner's plain loop in the sandbox, no screen, no budget: does it reach an accuracy?"""
    protocol = {
        **Protocol(time_limit_seconds=60, max_train_images=256, param_budget=10**12).__dict__,
        "threads": 1,
    }
    dataset = {"name": "digits", "validation_fraction": 0.2, "seed": 0, "max_train_images": 256,
               "data_dir": "", "allow_download": False}  # fmt: skip
    outcome = sandbox.run({"code": code, "structural_tokens": False, "protocol": protocol}, dataset, 60)
    return outcome.result is not None and outcome.result.get("status") == "OK"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=150, help="files only the old policy rejects, run")
    parser.add_argument(
        "--rejected-sample", type=int, default=0, help="files the current policy rejects, run [0 = all]"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    old, new = Policy.load(POLICY_V1_PATH), Policy.load()
    contract_ok = 0
    rejected_new: dict[str, list[str]] = {}  # file → the rules that reject it now
    only_old: list[str] = []
    sources = dict(iter_model_sources(lemur_wheel()))
    for name, code in sources.items():
        try:
            tree = parse_source(code)
        except SyntaxError:
            continue
        if not check_contract(tree).ok:
            continue
        contract_ok += 1
        now = screen(tree, new)
        if now:
            rejected_new[name] = sorted({v.rule + ": " + _reason(v.detail) for v in now})
        elif screen(tree, old):
            only_old.append(name)
    sample = random.Random(args.seed).sample(only_old, min(args.sample, len(only_old)))
    run_new = sorted(rejected_new)
    if 0 < args.rejected_sample < len(run_new):
        run_new = sorted(random.Random(args.seed).sample(run_new, args.rejected_sample))
    sandbox = Sandbox(Path("/tmp/archloop-screen-fp"))
    sandbox.start()
    try:
        trained_new = {name for name in run_new if trains(sandbox, sources[name])}
        trained_sample = sum(trains(sandbox, sources[name]) for name in sample)
    finally:
        sandbox.stop()
    low, high = wilson(trained_sample, len(sample))
    share = trained_sample / len(sample) if sample else 0.0
    new_low, new_high = wilson(len(trained_new), len(run_new))
    new_share = len(trained_new) / len(run_new) if run_new else 0.0
    all_run = len(run_new) == len(rejected_new)
    by_rule: collections.Counter[str] = collections.Counter()
    by_rule_trained: collections.Counter[str] = collections.Counter()
    by_rule_run: collections.Counter[str] = collections.Counter()
    for name, rules in rejected_new.items():
        for rule in rules:
            by_rule[rule] += 1
            by_rule_run[rule] += name in run_new
            by_rule_trained[rule] += name in trained_new
    rejected_old = len(rejected_new) + len(only_old)
    fp_new = new_share * len(rejected_new)
    fp_old = fp_new + share * len(only_old)
    new_cell = (
        f"{len(trained_new)} (all run)"
        if all_run
        else f"≈ {fp_new:,.0f}: {new_share:.0%} [{new_low:.0%}, {new_high:.0%}] of {len(run_new)} run"
    )
    lines = [
        START,
        "## Screen false positives on LEMUR",
        "",
        f"`python bench/screen_false_positives.py --sample {args.sample} "
        f"--rejected-sample {args.rejected_sample} --write` — {contract_ok:,} LEMUR "
        f"files that parse and meet the contract; {machine()}, {(time.monotonic() - started) / 60:.1f} min. "
        '"Trains": the '
        "sandbox's plain loop with the screen bypassed reaches an accuracy (Net, forward, train_setup, one "
        "epoch on 256 digits images; no budget).",
        "",
        "| policy | rejected | of them build and train |",
        "|---|---|---|",
        f"| before (policy-v1.yaml) | {rejected_old:,} | ≈ {fp_old:,.0f} (those still rejected + "
        f"{share:.0%} [{low:.0%}, {high:.0%}] of {len(only_old):,} now let through, {len(sample)} run) |",
        f"| after (policy.yaml) | {len(rejected_new):,} | {new_cell} |",
        "",
        "Still rejected, by rule (a file may count under several; the last column counts the files run):",
        "",
        "| rule | files | run | of them build and train |",
        "|---|---|---|---|",
    ]
    for rule, count in by_rule.most_common(25):
        lines.append(f"| {rule} | {count} | {by_rule_run[rule]} | {by_rule_trained[rule]} |")
    lines.append(END)
    publish(
        "screen_false_positives",
        {"contract_ok": contract_ok, "rejected_now": rejected_new, "run_now": run_new,
         "trained_now": sorted(trained_new), "only_old": len(only_old), "sample": sample,
         "sample_trained": trained_sample},
        "\n".join(lines), START, END, args.write,
    )  # fmt: skip
    return 0


def _reason(detail: str) -> str:
    """A violation's detail without the file-specific part: `import X is not allowed` stays whole."""
    return detail if detail.startswith(("import ", "from ")) else detail.split(":")[0].split("(")[0][:60]


if __name__ == "__main__":
    sys.exit(main())
