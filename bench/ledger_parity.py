"""Does a move of code change what the loop decides? The embedded experiment (same seed) on an earlier
commit and on this checkout, and every ledger figure of the two runs side by side.

    python bench/ledger_parity.py [--baseline COMMIT] [--cycles 3] [--candidates 24] [--seed 1]
        [--homes BEFORE AFTER] [--keep DIR] [--write]

The baseline runs from a git worktree (bench/loop_speed.py's), this checkout after it, each a whole
`archloop run` under its own $ARCHLOOP_HOME. With `--homes` two finished runs' homes are compared
instead (their experiment names: the folders' names). Compared, per candidate: program, validity,
evaluation status, accuracy, parameters, J_train / J_gen and their nearest ids, structural Jaccards,
topology, pre-check part, promotion, decision and reason; per cycle: phase, adapter, temperature,
corpus size, fine-tune examples and loss, the audit; and the kinds of the events in order. Times are
not compared. A figure that differs is listed; none listed is parity.

`--write` puts the section in docs/benchmarks.md; raw figures go to bench/results/ledger_parity.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loop_speed import phase_seconds, remove_worktree, worktree  # noqa: E402
from bench.report import built_corpus, machine, publish, run_experiment  # noqa: E402

START, END = "<!-- ledger-parity:start -->", "<!-- ledger-parity:end -->"
CANDIDATE_FIELDS = (
    "code", "valid", "eval_status", "accuracy", "param_count", "nn_jaccard_train", "nearest_train",
    "nn_jaccard_gen", "nearest_gen", "structural_jaccard_train", "structural_jaccard_gen",
    "topology_sha256", "same_topology_as", "precheck", "promoted_accuracy", "promoted_status",
    "decision", "reason",
)  # fmt: skip
CYCLE_FIELDS = (
    "phase", "temperature", "corpus_size_start", "fine_tune_examples", "fine_tune_loss", "audit_json",
)  # fmt: skip


def relative_ids(text: str, name: str) -> str:
    """`text` with the experiment's name replaced by EXP where it starts one of the run's ids
    (`NAME-c1`, `NAME-c1-0002`: archloop.ids)."""
    return re.sub(rf"(?<![\w-]){re.escape(name)}(?=-c\d)", "EXP", text)


def ledger_figures(home: Path, name: str) -> dict:
    """The figures of one run's ledger that a move of code must not change (ids made relative to the
    experiment's name, so two runs under different names compare: only where the name starts an id,
    `NAME-c1-0002`, never a word of a sentence that happens to be the name), and the ledger's span
    of the run (the experiment's creation to its end, or last write) with its phases, in seconds."""
    from services.controller.ledger import Ledger

    ledger = Ledger(home / "data" / "controller" / "ledger.sqlite3")
    try:

        def plain(value: object) -> object:
            text = value.value if hasattr(value, "value") else value
            return relative_ids(text, name) if isinstance(text, str) else text

        candidates = {
            f"c{row.cycle}-{row.idx:04d}": {f: plain(getattr(row, f)) for f in CANDIDATE_FIELDS}
            for row in ledger.candidates(name)
        }
        cycles = {
            str(row.cycle): {f: plain(getattr(row, f)) for f in CYCLE_FIELDS} for row in ledger.cycles(name)
        }
        events = [e.WhichOneof("payload") for e in ledger.events(name)]
        row = ledger.experiment_of(name)
        span = row.span_seconds
        phases = phase_seconds(list(ledger.events(name)), span)
    finally:
        ledger.close()
    return {"candidates": candidates, "cycles": cycles, "events": events, "span_seconds": span,
            "phase_seconds": phases}  # fmt: skip


def differences(before: dict, after: dict) -> list[str]:
    """Every figure that differs, as 'where: field before → after'."""
    found = []
    for part in ("candidates", "cycles"):
        for key in sorted(set(before[part]) | set(after[part])):
            old, new = before[part].get(key), after[part].get(key)
            if old is None or new is None:
                found.append(f"{part} {key}: {'missing before' if old is None else 'missing after'}")
                continue
            for field, value in old.items():
                if value != new[field]:
                    shown = [v if field != "code" else f"<{len(v or '')} chars>" for v in (value, new[field])]
                    found.append(f"{part} {key}: {field} {shown[0]!r} → {shown[1]!r}")
    if before["events"] != after["events"]:
        found.append(f"events: {before['events']} → {after['events']}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="", help="the commit before the move (default: HEAD~1)")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--homes", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--corpus", type=Path, default=None, help="default: the local corpus")
    parser.add_argument("--keep", type=Path, default=None, help="keep each arm's home here")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.homes:
        missing = [str(h) for h in args.homes if not (h / "data" / "controller" / "ledger.sqlite3").is_file()]
        if missing:
            print(f"no ledger under {', '.join(missing)}", file=sys.stderr)
            return 2
        before_home, after_home = args.homes
        how = f"the runs in {before_home} and {after_home}"
        walls: list[float] = []
    else:
        corpus = built_corpus(args.corpus)
        if corpus is None:
            return 2
        work = args.keep or Path(tempfile.mkdtemp(prefix="ledger-parity-"))
        config = {"cycles": args.cycles, "candidates_per_cycle": args.candidates, "seed": args.seed}
        before_home, after_home = work / "before", work / "after"
        walls = []
        source = worktree(args.baseline or "HEAD~1", work / "baseline-src")
        try:
            for home, checkout in ((before_home, source), (after_home, None)):
                home.mkdir(parents=True)
                seconds, code = run_experiment(
                    home, {**config, "name": home.name}, home.name, corpus, checkout
                )
                walls.append(seconds)
                if code != 0:
                    return 1
        finally:
            remove_worktree(source)
        how = (f"the embedded experiment, seed {args.seed}, {args.cycles} × {args.candidates}: "
               f"{args.baseline or 'HEAD~1'}, then this checkout")  # fmt: skip
    before = ledger_figures(before_home, before_home.name)
    after = ledger_figures(after_home, after_home.name)
    found = differences(before, after)
    lines = [
        START,
        "## Ledger parity: a move of code, the same decisions",
        "",
        f"`python bench/ledger_parity.py {' '.join(sys.argv[1:])}` ({machine()}): {how}.",
        "",
        f"{len(before['candidates'])} candidates and {len(before['cycles'])} cycles before, "
        f"{len(after['candidates'])} and {len(after['cycles'])} after; {len(before['events'])} events "
        f"before, {len(after['events'])} after. Fields compared: {', '.join(CANDIDATE_FIELDS)} "
        f"(each candidate); {', '.join(CYCLE_FIELDS)} (each cycle); the events' kinds in order.",
        "",
        "**Parity: no figure differs.**" if not found else f"**{len(found)} figures differ:**",
        *[f"- {line}" for line in found[:50]],
        "",
        f"Times (not compared): the ledger's span of the run (the experiment's creation to its end) "
        f"{before['span_seconds']:.0f} s before, {after['span_seconds']:.0f} s after "
        f"({after['span_seconds'] / before['span_seconds']:.2f})"
        + (f"; the whole command {walls[0]:.0f} s and {walls[1]:.0f} s." if walls else ".")
        + " By phase (the ledger's events): "
        + ", ".join(
            f"{phase} {seconds:.0f} → {after['phase_seconds'][phase]:.0f} s"
            for phase, seconds in before["phase_seconds"].items()
            if max(seconds, after["phase_seconds"][phase]) >= 1
        )
        + ".",
        END,
    ]
    results = {"differences": found, "seconds": walls, "before": before, "after": after}
    publish("ledger_parity", results, "\n".join(lines), START, END, args.write)
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
