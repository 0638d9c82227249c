"""What the tiny base model writes: the share of valid programs and of near-duplicates of the corpus.

    python bench/base_model_quality.py [--samples 32] [--temperature 0.2 --temperature 0.8] [--write]

For each temperature: sample programs token by token from the packaged tiny model with the
generator's CIFAR-10 prompt (what the embedded experiment asks; top-k 50, top-p 0.9, up to the
context end, fixed seeds), extract the code from the ```python block, evaluate each with the
evaluator (sandbox, offline digits, 1 epoch, batch 16: the embedded experiment's protocol) and check
it against the corpus's unique models with the novelty index (J > 0.90). `--write` replaces the
measured section of docs/base-model.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus, prompts  # noqa: E402
from bench.report import publish, write_section  # noqa: E402

SECTION_START = "<!-- base-model-quality:start -->"
SECTION_END = "<!-- base-model-quality:end -->"
CARD = ROOT / "docs" / "base-model.md"


def sample_programs(count: int, temperature: float, seed: int, batch: int = 8) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archloop.basemodel import TINY_MODEL_DIR

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32).eval()
    task = prompts.TASKS["cifar-10"]
    out = []
    for start in range(0, count, batch):
        text = tokenizer.apply_chat_template(
            prompts.chat_messages(task), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        n = min(batch, count - start)
        torch.manual_seed(seed + start)
        began = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(
                ids.repeat(n, 1),
                attention_mask=torch.ones_like(ids).repeat(n, 1),
                do_sample=True,
                temperature=temperature,
                top_k=50,
                top_p=0.9,
                max_new_tokens=model.config.n_positions - ids.shape[1],
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        seconds = time.perf_counter() - began
        for row in generated[:, ids.shape[1] :]:
            tokens = [t for t in row.tolist() if t != tokenizer.pad_token_id]
            response = tokenizer.decode(tokens, skip_special_tokens=True)
            code, how = prompts.extract_code(response)
            out.append(
                {
                    "task": task.dataset,
                    "completion_tokens": len(tokens),
                    "finished": tokenizer.eos_token_id in tokens,
                    "code": code,
                    "extraction": how,
                    "batch_seconds": seconds,
                }
            )
    return out


def evaluate_all(samples: list[dict], workdir: Path) -> None:
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox

    sandbox = Sandbox(workdir / "jobs")
    sandbox.start()
    try:
        evaluator = Evaluator(sandbox, workdir / "data")
        for i, sample in enumerate(samples):
            result = evaluator.evaluate(
                f"sample-{i}", sample["code"], Protocol(batch_size=16, time_limit_seconds=300), True
            )
            sample["status"], sample["accuracy"], sample["params"] = (
                result.status,
                result.accuracy,
                result.param_count,
            )
            sample["message"] = result.stages[-1].message if result.stages else ""
    finally:
        sandbox.stop()


def novelty_all(samples: list[dict], corpus_dir: Path) -> None:
    from services.novelty.collection import CollectionConfig
    from services.novelty.index import NoveltyIndex, Submission
    from services.novelty.store import EntryStore

    index = NoveltyIndex(EntryStore(":memory:"))
    index.create_collection("corpus", CollectionConfig(), exist_ok=False)
    kept = [e for e in corpus.read_jsonl(corpus_dir / "examples.jsonl") if e["dataset"] == "cifar-10"]
    index.import_entries(
        "corpus",
        (Submission(prompts.extract_code(e["messages"][-1]["content"])[0], e["model"]) for e in kept),
        skip_near_duplicates=False,
    )
    for sample in samples:
        match = index.check(Submission(sample["code"]), ["corpus"]).matches[0]
        sample["max_jaccard"], sample["near_duplicate"] = match.text.max_jaccard, match.near_duplicate


def summarise(temperature: float, samples: list[dict]) -> dict:
    valid = [s for s in samples if s["status"] == "OK"]
    return {
        "temperature": temperature,
        "samples": len(samples),
        "finished_share": sum(s["finished"] for s in samples) / len(samples),
        "parses_share": sum(s["status"] != "PARSE_ERROR" for s in samples) / len(samples),
        "valid_share": len(valid) / len(samples),
        "near_duplicate_share": sum(s["near_duplicate"] for s in samples) / len(samples),
        "valid_novel_share": sum(not s["near_duplicate"] for s in valid) / len(samples),
        "mean_max_jaccard": statistics.mean(s["max_jaccard"] for s in samples),
        "mean_valid_accuracy": statistics.mean(s["accuracy"] for s in valid) if valid else None,
        "best_accuracy": max((s["accuracy"] for s in valid), default=None),
        "mean_completion_tokens": statistics.mean(s["completion_tokens"] for s in samples),
        "statuses": dict(Counter(s["status"] for s in samples).most_common()),
    }


def markdown(rows: list[dict]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.0f} %"

    lines = [
        SECTION_START,
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `python bench/base_model_quality.py --write` "
        "(CIFAR-10 prompt; evaluator: sandbox, offline digits, 1 epoch, batch 16; novelty: J > 0.90 "
        "against the corpus's unique "
        "models):",
        "",
        "| temperature | samples | ended with `<\\|end\\|>` | parse | valid | near-duplicate of corpus "
        "| valid and novel | mean max J | mean / best accuracy of valid | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = (
            "–"
            if r["mean_valid_accuracy"] is None
            else f"{r['mean_valid_accuracy']:.3f} / {r['best_accuracy']:.3f}"
        )
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {r['temperature']} | {r['samples']} | {pct(r['finished_share'])} | {pct(r['parses_share'])} "
            f"| {pct(r['valid_share'])} | {pct(r['near_duplicate_share'])} | {pct(r['valid_novel_share'])} "
            f"| {r['mean_max_jaccard']:.3f} | {acc} | {statuses} |"
        )
    lines += ["", "Raw figures and every sample: `bench/results/base_model_quality.json`.", SECTION_END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--temperature", type=float, action="append")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus folder [default: build one]")
    parser.add_argument("--write", action="store_true", help="update docs/base-model.md")
    args = parser.parse_args()
    temperatures = args.temperature or [0.2, 0.8]
    rows, everything = [], []
    with tempfile.TemporaryDirectory(prefix="base-model-quality-") as tmp:
        corpus_dir = args.corpus or corpus.build_corpus(Path(tmp) / "corpus").out_dir
        for i, temperature in enumerate(temperatures):
            samples = sample_programs(args.samples, temperature, seed=1000 * (i + 1))
            evaluate_all(samples, Path(tmp))
            novelty_all(samples, corpus_dir)
            rows.append(summarise(temperature, samples))
            everything.append({"temperature": temperature, "samples": samples})
            print(rows[-1], flush=True)
    section = markdown(rows)
    publish(
        "base_model_quality",
        {"summary": rows, "samples": everything},
        section,
        SECTION_START,
        SECTION_END,
        False,
    )
    if args.write:
        write_section(section, SECTION_START, SECTION_END, CARD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
