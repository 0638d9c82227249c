"""Generator benchmark: batched against one-at-a-time sampling (local backend), time to first candidate.

    python bench/generator_bench.py [--candidates 16] [--batch 8] [--max-new-tokens 256] [--rounds 2]
                                    [--write]

Same model (the tiny packaged base), same prompt (full mode, CIFAR-10), same decoding (the paper's:
temperature 0.2, top-k 50, top-p 0.9; --max-new-tokens cap), same torch threads, same process. The
baseline samples the candidates one at a time (batch 1, KV cache); the measured run samples them in
batches of --batch. Runs alternate (one-at-a-time, batched, ...) so drift hits both. Reported:
generated tokens/s (tokens up to each candidate's end-of-text, over wall time; goal ≥ 3×) and time to
first candidate through the whole candidate maker (prompt, sampling, extraction). `--write` replaces
the generator section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop.v1 import common_pb2, generator_pb2  # noqa: E402
from bench.report import machine as report_machine  # noqa: E402
from bench.report import publish  # noqa: E402

SECTION_START = "<!-- generator-bench:start -->"
SECTION_END = "<!-- generator-bench:end -->"
THREADS = 2


def run_once(backend, factors, batch: int, candidates: int, max_new_tokens: int, seed: int) -> dict:
    from services.generator.engine import CandidateMaker
    from services.generator.plan import plan_from_request

    maker = CandidateMaker(backend.generate, "local", backend.model_id, batch, factors)
    request = generator_pb2.GenerateCandidatesRequest(
        experiment_id="bench",
        n=candidates,
        seed=seed,
        mode=common_pb2.GENERATION_MODE_FULL,
        decoding=common_pb2.DecodingParams(max_new_tokens=max_new_tokens),
    )
    started = time.perf_counter()
    first = None
    tokens = 0
    for candidate in maker.run(plan_from_request(request, candidates, factors)):
        first = first if first is not None else time.perf_counter() - started
        tokens += candidate.generation.completion_tokens
    seconds = time.perf_counter() - started
    return {
        "batch": batch,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "first_candidate_seconds": first,
    }


def markdown(r: dict) -> str:
    return "\n".join(
        [
            SECTION_START,
            "## Generator service",
            "",
            f"`python bench/generator_bench.py` on {r['date']} ({r['machine']}).",
            f"Local backend, the tiny packaged base model on CPU ({THREADS} torch threads), full mode,",
            f"the paper's decoding, at most {r['max_new_tokens']} new tokens; {r['candidates']} candidates",
            f"per run, {r['rounds']} alternating rounds. Goal (issue 7): batched ≥ 3× one at a time.",
            "",
            "| measure | one at a time | batches of " + str(r["batch"]) + " | ratio |",
            "|---|---|---|---|",
            f"| generated tokens/s (median) | {r['single_tokens_per_second']:.0f} | "
            f"{r['batched_tokens_per_second']:.0f} | **{r['ratio']:.2f}×** |",
            f"| time to first candidate (median, s) | {r['single_first_seconds']:.2f} | "
            f"{r['batched_first_seconds']:.2f} | |",
            f"| tokens per run | {r['single_tokens']:,} | {r['batched_tokens']:,} | |",
            "",
            "Batching trades latency for throughput: the first candidate of a batch arrives with the whole",
            "batch. Real TGI was not run here (no GPU); its continuous batching is not measured.",
            "",
            "Raw figures: `bench/results/generator.json`.",
            SECTION_END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    from archloop.factors import load_factors
    from services.generator.local import LocalBackend

    backend = LocalBackend("", "cpu", THREADS)
    factors = load_factors()
    single, batched = [], []
    for i in range(args.rounds):
        single.append(run_once(backend, factors, 1, args.candidates, args.max_new_tokens, seed=i))
        print(f"round {i}: one at a time {single[-1]['tokens_per_second']:.0f} tokens/s", flush=True)
        batched.append(run_once(backend, factors, args.batch, args.candidates, args.max_new_tokens, seed=i))
        print(
            f"round {i}: batches of {args.batch} {batched[-1]['tokens_per_second']:.0f} tokens/s", flush=True
        )
    median = statistics.median
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": report_machine(),
        "candidates": args.candidates,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "single_tokens_per_second": median(r["tokens_per_second"] for r in single),
        "batched_tokens_per_second": median(r["tokens_per_second"] for r in batched),
        "single_first_seconds": median(r["first_candidate_seconds"] for r in single),
        "batched_first_seconds": median(r["first_candidate_seconds"] for r in batched),
        "single_tokens": single[0]["tokens"],
        "batched_tokens": batched[0]["tokens"],
        "runs": {"single": single, "batched": batched},
    }
    result["ratio"] = result["batched_tokens_per_second"] / result["single_tokens_per_second"]
    publish("generator", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
