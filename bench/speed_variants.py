"""Where the loop's minutes went: the fine-tune's and the sampler's candidate speed-ups, each measured.

    python bench/speed_variants.py [--examples 12] [--new-tokens 400] [--write]

**Fine-tune variants** (one process, the same examples: the first --examples of the embedded
fine-tune's seeded LEMUR sample that fit 1,536 tokens; LoRA rank 16, alpha 32, dropout 0.05 on c_attn /
c_proj / c_fc; batch 1 × accumulation 4; AdamW; 2 threads), each from a fresh copy of the packaged
model: the trainer as it was (GPT-2's own dropout 0.1 on, `gelu_new` written out, fp32), then one
change at a time in the order they were adopted, and the candidates that were not (padded batches of 2
and 4, eager attention, a full fine-tune without peft, no LoRA dropout at all). Tokens/s over the
training loop.

**Sampling variants** (the generator's local backend, the embedded decoding: T 0.5, top-k 50, top-p
0.9; a batch of 8 CIFAR-10 prompts, --new-tokens forced per row): torch threads 2 and 1, alone and
beside one single-threaded CPU-bound process (a small CNN training, as an evaluation of a streamed
candidate is); a batch of 24; and with a LoRA adapter through peft against the same adapter merged
into a copy of the weights. Tokens/s of sampled rows.

`--write` replaces this bench's section of docs/benchmarks.md; raw figures go to
bench/results/speed_variants.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loop_speed import trainer_examples  # noqa: E402
from bench.report import built_corpus, machine, publish  # noqa: E402
from tools.testing import random_lora_adapter  # noqa: E402

START, END = "<!-- speed-variants:start -->", "<!-- speed-variants:end -->"
THREADS = 2
LOAD_SCRIPT = """
import time, torch
torch.set_num_threads(1)
x, conv = torch.randn(64, 16, 32, 32), torch.nn.Conv2d(16, 16, 3, padding=1)
while True:
    conv(x).sum().backward()
"""


# -- fine-tune -----------------------------------------------------------------------------------------
def _model(written_out_gelu: bool, base_dropout: bool, lora_dropout: float = 0.05, peft: bool = True):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from archloop.basemodel import TINY_MODEL_DIR, load_base
    from services.trainer.lora import without_base_dropout
    from services.trainer.spec import TARGET_MODULES

    if written_out_gelu:
        model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    else:
        model = load_base("", "cpu")[0]
    if not base_dropout:
        without_base_dropout(model)
    if peft:
        config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=lora_dropout,
            target_modules=TARGET_MODULES["gpt2"],
            task_type="CAUSAL_LM",
            fan_in_fan_out=True,
        )
        model = get_peft_model(model, config)
    model.train()
    return model


def _train(model, examples, pad_id: int, batch: int = 1, bf16: bool = False) -> float:
    import contextlib

    import torch

    from services.trainer.data import collate

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    tokens, began = 0, time.perf_counter()
    for index in range(0, len(examples), batch):
        ids, labels, mask = collate(examples[index : index + batch], pad_id, "cpu")
        scope = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with scope:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / 4
        loss.backward()
        tokens += int(mask.sum())
        if (index // batch) % 4 == 3:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - began)


def fine_tune_variants(examples_path: Path) -> list[dict]:
    from archloop.basemodel import load_base
    from services.trainer.data import encode_examples

    _, tokenizer, _ = load_base("", "cpu")
    examples, _ = encode_examples(examples_path, tokenizer, 1536)
    pad = tokenizer.pad_token_id

    def eager():
        model = _model(False, False)
        model.base_model.model.set_attn_implementation("eager")
        return model

    variants = [
        ("as it was: GPT-2's dropout on, gelu_new written out, fp32", lambda: _model(True, True), {}, "was"),
        ("− the base model's dropout", lambda: _model(True, False), {}, "adopted"),
        ("− … and torch's fused tanh-GELU", lambda: _model(False, False), {}, "adopted"),
        ("− … and bf16 autocast (the trainer now)", lambda: _model(False, False), {"bf16": True}, "adopted"),
        (
            "the trainer now, padded batches of 2",
            lambda: _model(False, False),
            {"bf16": True, "batch": 2},
            "not",
        ),
        (
            "the trainer now, padded batches of 4",
            lambda: _model(False, False),
            {"bf16": True, "batch": 4},
            "not",
        ),
        ("the trainer now, eager attention", eager, {"bf16": True}, "not"),
        (
            "full fine-tune, no peft (bf16 autocast)",
            lambda: _model(False, False, peft=False),
            {"bf16": True},
            "not",
        ),
        (
            "no LoRA dropout either (a setting, not ours to drop)",
            lambda: _model(False, False, 0.0),
            {"bf16": True},
            "not",
        ),
    ]
    results = []
    for label, make, options, status in variants:
        rate = _train(make(), examples, pad, **options)
        results.append({"variant": label, "tokens_per_second": round(rate, 1), "status": status})
        print(json.dumps(results[-1]), flush=True)
    return results


# -- sampling ------------------------------------------------------------------------------------------
def _sample_rate(model, encoded, new_tokens: int, grown: bool = False) -> float:
    import torch

    from services.generator.kvcache import growing_cache

    cache = {"past_key_values": growing_cache(model)} if grown else {}
    torch.manual_seed(1)
    began = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **encoded,
            do_sample=True,
            temperature=0.5,
            top_k=50,
            top_p=0.9,
            pad_token_id=0,
            eos_token_id=1,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            **cache,
        )
    return encoded["input_ids"].shape[0] * new_tokens / (time.perf_counter() - began)


def sampling_variants(new_tokens: int, work: Path) -> list[dict]:
    import torch
    from peft import PeftModel

    from archloop import datasets, prompts
    from services.generator.local import LocalBackend

    backend = LocalBackend("", "cpu", threads=THREADS)
    entry = datasets.CATALOGUE["digits"]
    task = prompts.task_for("cifar10", entry.input_shape, entry.num_classes, 500_000)
    text = backend.render(prompts.chat_messages(task))

    def encoded(rows: int):
        return backend.tokenizer([text] * rows, return_tensors="pt", padding=True, add_special_tokens=False)

    folder = random_lora_adapter(work / "adapter", rank=16)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(backend.model), str(folder)).eval()
    merged = PeftModel.from_pretrained(copy.deepcopy(backend.model), str(folder)).merge_and_unload().eval()
    results = []

    def measure(
        label: str, threads: int, model, rows: int = 8, beside_load: bool = False, grown: bool = False
    ) -> None:
        torch.set_num_threads(threads)
        load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT]) if beside_load else None
        try:
            if load is not None:
                time.sleep(2)  # let it start
            rate = _sample_rate(model, encoded(rows), new_tokens, grown)
        finally:
            if load is not None:
                load.kill()
                load.wait()
        results.append(
            {
                "variant": label,
                "threads": threads,
                "rows": rows,
                "beside_load": beside_load,
                "tokens_per_second": round(rate, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)

    measure("base model, 2 threads, alone", 2, backend.model)
    measure("base model, 1 thread, alone", 1, backend.model)
    measure(
        "base model, 2 threads, beside one single-threaded evaluation", 2, backend.model, beside_load=True
    )
    measure("base model, 1 thread, beside one single-threaded evaluation", 1, backend.model, beside_load=True)
    measure("base model, 2 threads, a batch of 24", 2, backend.model, rows=24)
    measure("base model, 2 threads, a batch of 24, the KV cache grown in place", 2, backend.model, rows=24,
            grown=True)  # fmt: skip
    measure("adapter through peft, 2 threads", 2, peft_model)
    measure("adapter merged into a copy, 2 threads", 2, merged)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=400)
    parser.add_argument(
        "--seed", type=int, default=1, help="the embedded experiment's seed (its LEMUR sample)"
    )
    parser.add_argument("--corpus", type=Path, default=None, help="default: the local corpus")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.examples < 1 or args.new_tokens < 1:
        print("--examples and --new-tokens must be at least 1", file=sys.stderr)
        return 2
    import torch

    corpus = built_corpus(args.corpus)
    if corpus is None:
        return 2
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="speed-variants-") as tmp:
        examples = trainer_examples(corpus, args.examples, args.seed, Path(tmp) / "examples.jsonl")
        tuning = fine_tune_variants(examples)
        sampling = sampling_variants(args.new_tokens, Path(tmp))
    first = tuning[0]["tokens_per_second"]
    lines = [
        START,
        "## Where the loop's minutes went: fine-tune and sampling variants",
        "",
        f"`python bench/speed_variants.py {' '.join(sys.argv[1:])}` ({machine()}); one process, "
        f"{args.examples} examples, {THREADS} threads unless said.",
        "",
        "| fine-tune variant | tokens/s | ÷ as it was | |",
        "|---|---|---|---|",
    ]
    verdict = {"was": "", "adopted": "adopted", "not": "not adopted"}
    for row in tuning:
        rate = row["tokens_per_second"]
        lines.append(f"| {row['variant']} | {rate:.0f} | {rate / first:.2f} | {verdict[row['status']]} |")
    alone = sampling[0]["tokens_per_second"]
    lines += [
        "",
        f"| sampling variant (batch of 8 unless said, {args.new_tokens} tokens a row) | tokens/s | "
        "÷ 2 threads alone |",
        "|---|---|---|",
    ]
    for row in sampling:
        rate = row["tokens_per_second"]
        lines.append(f"| {row['variant']} | {rate:.0f} | {rate / alone:.2f} |")
    lines += ["", "Raw figures: `bench/results/speed_variants.json`.", END]
    publish(
        "speed_variants",
        {"fine_tune": tuning, "sampling": sampling},
        "\n".join(lines),
        START,
        END,
        args.write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
