"""What text novelty misses on a recorded run: each valid program's text J and structural J to the corpus.

    python bench/structural_channel.py EXPERIMENT [--home DIR] [--corpus DIR] [--threshold 0.9] [--write]

Reads the experiment's valid candidates from its ledger (`$ARCHLOOP_HOME/data/controller/ledger.sqlite3`:
code, and the evaluator's structural tokens) and the corpus's structural tokens (`archloop corpus
structure`), and computes for every candidate, exactly (every pair, no MinHash): the text J to its
nearest corpus program (the novelty service's 10-token shingles) and the structural J to its nearest
corpus program (its 3-token shingles over forward-order layer tokens), and whether a corpus program
has the same shape-free forward topology. The figure that matters is how many programs are novel by
text (J < τ) yet a structural near-duplicate (J_struct ≥ τ) or the same topology as a corpus program:
what the structural channel would add to the filter. `--write` puts the table in docs/benchmarks.md.
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

    from archloop import corpus, topology
    from archloop.paths import corpus_dir
    from services.controller.ledger import Ledger
    from services.novelty.collection import CollectionConfig
    from services.novelty.fingerprint import Lexer, exact_jaccard, fingerprint_source, fingerprint_tokens

    source = args.corpus or corpus_dir()
    structure = corpus.read_structure(source)
    if not structure:
        print(f"{source} has no structural tokens: run `archloop corpus structure` first", file=sys.stderr)
        return 2
    ledger_path = args.home / "data" / "controller" / "ledger.sqlite3"
    if not ledger_path.exists():
        print(f"{ledger_path} does not exist: no controller has run under {args.home}", file=sys.stderr)
        return 2
    valid = [c for c in Ledger(ledger_path).candidates(args.experiment) if c.valid and c.structural_tokens]
    if not valid:
        print(f"experiment {args.experiment} has no valid candidate with structural tokens", file=sys.stderr)
        return 2
    config = CollectionConfig()

    def text(code: str):
        return fingerprint_source(
            code, config.shingle_size, config.num_permutations, config.minhash_seed
        ).shingles

    def struct(tokens: list[str]):
        return fingerprint_tokens(
            tokens, Lexer.PYTHON, config.structural_shingle_size, config.num_permutations, config.minhash_seed
        ).shingles

    programs = corpus.training_programs(source)
    corpus_text = [text(code) for code in programs.values()]
    corpus_struct = [struct(tokens) for tokens in structure.values()]
    corpus_topologies = {topology.signature(topology.forward_topology(t)) for t in structure.values()}
    rows = []
    for c in valid:
        j_text = max(exact_jaccard(text(c.code), other) for other in corpus_text)
        j_struct = max(exact_jaccard(struct(c.structural_tokens), other) for other in corpus_struct)
        same = topology.signature(topology.forward_topology(c.structural_tokens)) in corpus_topologies
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
        "## The structural channel on a recorded run: what text novelty misses",
        "",
        f"`python bench/structural_channel.py {' '.join(sys.argv[1:])}` ({machine()}): {len(rows)} valid "
        f"programs of `{args.experiment}` against {len(structure):,} corpus programs with structural tokens "
        f"(of {len(programs):,}); exact Jaccard, τ = {tau}.",
        "",
        "| measure | programs |",
        "|---|---|",
        f"| novel by text (J_train < τ) | {len(novel)} of {len(rows)} |",
        f"| of those, structural near-duplicates of a corpus program (J_struct ≥ τ) | {len(caught)} |",
        f"| of those, the same shape-free forward topology as a corpus program | {len(same_topology)} |",
        f"| mean text J / structural J to the nearest corpus program "
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
