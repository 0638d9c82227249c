"""What text novelty misses on a recorded run: each valid program's text J and architecture J to the corpus.

    python bench/structural_channel.py EXPERIMENT [--home DIR] [--corpus DIR] [--threshold 0.9] [--write]

Reads the experiment's valid candidates from its ledger (`$ARCHLOOP_HOME/data/controller/ledger.sqlite3`:
code, and the evaluator's architecture tokens and wiring hash) and the corpus's architectures
(`archloop corpus structure`, or build), and computes for every candidate, exactly (every pair, no
MinHash): the text J to its nearest corpus program (the novelty service's 10-token shingles), the
architecture J to its nearest corpus program (the sets of WL subgraph hashes, archloop.archgraph),
and whether a corpus program has its wiring hash. The figure that matters is how many programs are
novel by text (J < τ) yet an architecture near-duplicate (J_arch ≥ τ) or a corpus program's wiring:
what architecture novelty adds to the filter. `--write` puts the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine, publish  # noqa: E402

START, END = "<!-- structural-channel:start -->", "<!-- structural-channel:end -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("ARCHLOOP_HOME") or Path.home() / ".archloop")
    )
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    from archloop import corpus
    from archloop.archgraph import token_jaccard
    from archloop.paths import corpus_dir
    from services.controller.ledger import Ledger
    from services.novelty.collection import CollectionConfig
    from services.novelty.fingerprint import exact_jaccard, fingerprint_source

    source = args.corpus or corpus_dir()
    architectures = corpus.read_architectures(source)
    if not architectures:
        print(f"{source} has no architecture graphs: run `archloop corpus structure` first", file=sys.stderr)
        return 2
    ledger_path = args.home / "data" / "controller" / "ledger.sqlite3"
    if not ledger_path.exists():
        print(f"{ledger_path} does not exist: no controller has run under {args.home}", file=sys.stderr)
        return 2
    valid = [c for c in Ledger(ledger_path).candidates(args.experiment) if c.valid and c.wiring_hash]
    if not valid:
        print(
            f"experiment {args.experiment} has no valid candidate with a recorded architecture",
            file=sys.stderr,
        )
        return 2
    config = CollectionConfig()

    def text(code: str):
        return fingerprint_source(
            code, config.shingle_size, config.num_permutations, config.minhash_seed
        ).shingles

    programs = corpus.training_programs(source)
    corpus_text = [text(code) for code in programs.values()]
    corpus_tokens = [r["tokens"] for r in architectures.values()]
    corpus_wiring = {r["wiring_hash"] for r in architectures.values()}
    rows = []
    for c in valid:
        j_text = max(exact_jaccard(text(c.code), other) for other in corpus_text)
        j_struct = max(token_jaccard(c.structural_tokens, other) for other in corpus_tokens)
        same = c.wiring_hash in corpus_wiring
        rows.append(
            {"candidate_id": c.candidate_id, "j_text": j_text, "j_struct": j_struct, "same_topology": same}
        )
    tau = args.threshold
    novel = [r for r in rows if r["j_text"] < tau]
    caught = [r for r in novel if r["j_struct"] >= tau]
    same_topology = [r for r in novel if r["same_topology"]]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    lines = [
        START,
        "## The architecture channel on a recorded run: what text novelty misses",
        "",
        f"`python bench/structural_channel.py {' '.join(sys.argv[1:])}` ({machine()}): {len(rows)} valid "
        f"programs of `{args.experiment}` against {len(architectures):,} corpus programs with graphs "
        f"(of {len(programs):,}); exact Jaccard, τ = {tau}.",
        "",
        "| measure | programs |",
        "|---|---|",
        f"| novel by text (J_train < τ) | {len(novel)} of {len(rows)} |",
        f"| of those, architecture near-duplicates of a corpus program (J_arch ≥ τ) | {len(caught)} |",
        f"| of those, a corpus program's wiring (the same wiring hash) | {len(same_topology)} |",
        f"| mean text J / architecture J to the nearest corpus program "
        f"| {mean([r['j_text'] for r in rows]):.3f} / {mean([r['j_struct'] for r in rows]):.3f} |",
        "",
        "Raw figures: `bench/results/structural_channel.json`.",
        END,
    ]
    publish("structural_channel", {"experiment": args.experiment, "rows": rows}, "\n".join(lines), START, END,
            args.write)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
