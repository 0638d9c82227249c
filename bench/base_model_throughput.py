"""Which base model the embedded experiment should use: valid-and-novel programs per minute of sampling.

    python bench/base_model_throughput.py [--model '' --model smollm2-135m-instruct] [--samples 8]
        [--max-new-tokens 768] [--rounds 2] [--threads 2] [--temperature T] [--write]

The embedded default is picked by measurement (issue 17): valid-and-novel programs per minute of wall
time on 2 cores. Sampling is where a base model's minutes go (evaluating a program costs the same
whichever model wrote it), so for each model, in this one process and with the same torch threads:

- **tokens/s** of batched sampling (the generator's local backend, CIFAR-10 prompt, T 0.2 (the
  paper's; --temperature changes it), top-k 50, top-p 0.9, batches of 8, at most
  --max-new-tokens each); rounds alternate between the models so CPU drift hits all of them; the
  first model is the baseline of the ratio column;
- **tokens per program**: the corpus's programs (the answers of its pairs) in the model's own tokenizer
  (vocabularies differ: 4,096 tokens for the tiny model, 49,152 for SmolLM2);
- **ceiling**: programs per minute if every program were valid and novel (60 · tokens/s / tokens per
  program), an upper bound no fine-tune can beat;
- **measured**: where `bench/base_model_quality.py` has results for the model at that temperature,
  its raw valid-and-novel share × the programs per minute this bench's tokens/s gives at the mean
  completion length that bench measured.

A model whose ceiling is below another's measured rate cannot be the better default on this machine,
whatever its valid rate after fine-tuning. `--write` replaces this bench's section of
docs/benchmarks.md; raw figures go to bench/results/base_model_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus, paths, prompts  # noqa: E402
from bench.report import machine, publish  # noqa: E402

SECTION_START = "<!-- base-model-throughput:start -->"
SECTION_END = "<!-- base-model-throughput:end -->"
BATCH = 8
PROGRAMS_FOR_LENGTH = 400


def _label(reference: str) -> str:
    return Path(reference).name if reference else "archloop-tiny-coder"


def sampling_rate(
    backend, samples: int, max_new_tokens: int, temperature: float, seed: int
) -> tuple[int, float]:
    """(completion tokens, seconds) of sampling `samples` programs in batches."""
    from services.generator.backend import Decoding

    chat = prompts.chat_messages(prompts.TASKS["cifar-10"])
    decoding = Decoding(temperature=temperature, top_k=50, top_p=0.9, max_new_tokens=max_new_tokens)
    tokens, seconds = 0, 0.0
    for start in range(0, samples, BATCH):
        n = min(BATCH, samples - start)
        completions = backend.generate([chat] * n, decoding, [seed + start + i for i in range(n)], "")
        tokens += sum(c.completion_tokens for c in completions)
        seconds += completions[0].latency_seconds  # one batch: every completion carries its latency
    return tokens, seconds


def program_tokens(backend, corpus_dir: Path) -> float:
    """Mean length, in this model's tokens, of the corpus's programs (the first PROGRAMS_FOR_LENGTH)."""
    lengths, seen = [], set()
    for example in corpus.read_jsonl(corpus_dir / "examples.jsonl"):
        if example["model"] in seen:  # a program's pairs share its code
            continue
        seen.add(example["model"])
        lengths.append(backend.count_tokens(example["messages"][-1]["content"]))
        if len(lengths) == PROGRAMS_FOR_LENGTH:
            break
    return statistics.mean(lengths)


def measured_quality(label: str, temperature: float) -> dict | None:
    """The row at `temperature` of bench/base_model_quality.py's results for this model, if it has one."""
    path = ROOT / "bench" / "results" / f"base_model_quality-{label}.json"
    if not path.exists():
        return None
    rows = [r for r in json.loads(path.read_text())["summary"] if r["temperature"] == temperature]
    return rows[0] if rows else None


def markdown(result: dict) -> str:
    def num(x: float | None, digits: int = 1) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    lines = [
        SECTION_START,
        "## Base models: valid-and-novel programs per minute (which one the embedded default is)",
        "",
        f"`python bench/base_model_throughput.py {result['args']}` on {result['date']} "
        f"({result['machine']}).",
        f"Batched sampling (batches of {BATCH}, T {result['temperature']}, "
        f"at most {result['max_new_tokens']} new tokens, "
        f"{result['samples']} programs × {result['rounds']} alternating rounds, {result['threads']} torch "
        "threads, one process); program length: the corpus's programs in each model's tokenizer; measured "
        "rate: raw valid-and-novel share at that T from `bench/base_model_quality.py` × programs per minute.",
        "",
        "| model | tokens/s (median) | ratio to first | tokens per program | ceiling: programs/min if all "
        "valid and novel | raw valid and novel | **measured valid-and-novel programs/min** |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
        quality = r["quality"]
        lines.append(
            f"| {r['model']} | {r['tokens_per_second']:.0f} | {r['ratio']:.2f}× | {r['program_tokens']:.0f} "
            f"| {r['ceiling_per_minute']:.1f} | "
            + ("–" if quality is None else f"{100 * quality['valid_novel_share']:.0f} %")
            + f" | **{num(r['measured_per_minute'])}** |"
        )
    lines += [
        "",
        result["verdict"],
        "",
        "Raw figures: `bench/results/base_model_throughput.json`.",
        SECTION_END,
    ]
    return "\n".join(lines)


def verdict(models: list[dict]) -> str:
    measured = [m for m in models if m["measured_per_minute"] is not None]
    if not measured:
        return "No model has quality results yet: run bench/base_model_quality.py first."
    best = max(measured, key=lambda m: m["measured_per_minute"])
    bar = best["measured_per_minute"]
    beaten = [m["model"] for m in models if m is not best and m["ceiling_per_minute"] < bar]
    open_ = [m["model"] for m in models if m is not best and m["model"] not in beaten]
    text = f"Best measured: **{best['model']}** ({bar:.1f} valid-and-novel programs/min)."
    if beaten:
        text += (
            f" {', '.join(beaten)} cannot beat it on this machine even at 100 % valid and novel "
            "(its ceiling is lower), so the embedded default is " + best["model"] + "."
        )
    if open_:
        text += f" Not decided against: {', '.join(open_)} (its ceiling is higher; measure its quality)."
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="base model reference ('' = the tiny model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--temperature", type=float, default=0.2, help="the paper's by default; the embedded runs at 0.5"
    )
    parser.add_argument("--corpus", type=Path, default=paths.corpus_dir())
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    references = args.model if args.model is not None else ["", "smollm2-135m-instruct"]
    if not (args.corpus / "examples.jsonl").exists():
        print(f"{args.corpus} holds no corpus: run `archloop corpus build` or give --corpus", file=sys.stderr)
        return 2

    from archloop import basemodel
    from services.generator.local import LocalBackend

    try:
        backends = {ref: LocalBackend(ref, device="cpu", threads=args.threads) for ref in references}
    except basemodel.BaseModelNotFound as e:
        print(str(e), file=sys.stderr)
        return 2
    runs: dict[str, list[float]] = {ref: [] for ref in references}
    for round_ in range(args.rounds):
        for ref, backend in backends.items():
            tokens, seconds = sampling_rate(
                backend, args.samples, args.max_new_tokens, args.temperature, 100 * round_
            )
            runs[ref].append(tokens / seconds)
            print(f"round {round_}: {_label(ref)} {tokens / seconds:.1f} tokens/s", flush=True)
    models = []
    for ref, backend in backends.items():
        rate = statistics.median(runs[ref])
        length = program_tokens(backend, args.corpus)
        quality = measured_quality(_label(ref), args.temperature)
        measured = None
        if quality is not None:
            # this bench's tokens/s (same process as the others) over the length its programs really had
            measured = quality["valid_novel_share"] * 60 * rate / quality["mean_completion_tokens"]
        models.append(
            {
                "model": _label(ref),
                "tokens_per_second": rate,
                "rounds_tokens_per_second": runs[ref],
                "program_tokens": length,
                "ceiling_per_minute": 60 * rate / length,
                "quality": quality,
                "measured_per_minute": measured,
            }
        )
    for m in models:
        m["ratio"] = m["tokens_per_second"] / models[0]["tokens_per_second"]
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine(),
        "args": " ".join(sys.argv[1:]),
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "temperature": args.temperature,
        "models": models,
        "verdict": verdict(models),
    }
    publish("base_model_throughput", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
