"""Trainer benchmark: the service's LoRA training throughput against a plain loop, and corpus build time.

    python bench/trainer_bench.py [--examples 24] [--epochs 2] [--rounds 2] [--write]

Same model (the tiny packaged base), same examples (the first --examples of the corpus that fit its
context, loss on the code tokens), same LoRA and schedule (rank 32, alpha 32, dropout 0.05, batch 1 ×
accumulation 4, AdamW, cosine, clip 1.0), same threads. The baseline is a plain PyTorch loop over the
transformers model in this process; the service run is a real trainer process with a job started
over gRPC. Runs alternate (baseline, service, baseline, ...) so drift hits both. Reported:
steady-state tokens/s (first micro-batch to last optimiser step; goal: service ≥ 0.95× baseline) and
the end-to-end job time including the worker's start (imports, model load), which a job of hours
amortises. `--write` replaces the trainer section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import corpus  # noqa: E402
from bench.report import machine as report_machine  # noqa: E402
from bench.report import publish  # noqa: E402
from tools import corpus_build  # noqa: E402
from tools.localstack import ServiceProcess  # noqa: E402

SECTION_START = "<!-- trainer-bench:start -->"
SECTION_END = "<!-- trainer-bench:end -->"
THREADS = 2


def bench_examples(corpus_dir: Path, count: int, out: Path) -> Path:
    """The first `count` corpus examples that fit the tiny model's context, as a JSONL file."""
    from transformers import AutoTokenizer

    from archloop.basemodel import TINY_MODEL_DIR

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    rows = []
    for row in corpus.read_jsonl(corpus_dir / "examples.jsonl"):
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 1024:
            rows.append(row)
        if len(rows) == count:
            break
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def plain_loop(examples_path: Path, epochs: int, seed: int, device: str = "cpu") -> dict:
    """The baseline: load, wrap with LoRA, and train with an ordinary loop (bf16 on CUDA, as the
    trainer does there)."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from archloop.basemodel import TINY_MODEL_DIR
    from services.trainer.data import encode_examples

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=dtype).to(device)
    model = get_peft_model(
        model,
        LoraConfig(
            r=32,
            lora_alpha=32,
            lora_dropout=0.05,
            fan_in_fan_out=True,
            target_modules=["c_attn", "c_proj", "c_fc"],
            task_type="CAUSAL_LM",
        ),
    )
    examples, _ = encode_examples(examples_path, tokenizer, 1024)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01
    )
    accumulation = 4
    total = epochs * -(-len(examples) // accumulation)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=min(20, total // 10), num_training_steps=total
    )
    model.train()
    tokens = 0
    started = time.perf_counter()
    for epoch in range(epochs):
        order = list(range(len(examples)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for i, index in enumerate(order):
            e = examples[index]
            ids = torch.tensor([e.input_ids], device=device)
            labels = torch.tensor([e.labels], device=device)
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            (loss / accumulation).backward()
            tokens += ids.numel()
            if (i + 1) % accumulation == 0 or i + 1 == len(order):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds}


def service_run(examples_path: Path, epochs: int, seed: int, workdir: Path, name: str) -> dict:
    import grpc

    from archloop.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

    proc = ServiceProcess(
        "trainer",
        workdir,
        workdir / f"{name}.log",
        [
            "--state-dir",
            str(workdir / name),
            "--artifacts-dir",
            str(workdir / name / "artifacts"),
            "--checkpoint-every-steps",
            "0",
            "--worker-threads",
            str(THREADS),
        ],
    )
    try:
        proc.wait_ready()
        stub = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(proc.address))
        total = epochs * -(-len(examples_path.read_text().splitlines()) // 4)
        started = time.perf_counter()
        stub.StartFineTune(
            trainer_pb2.StartFineTuneRequest(
                job_id=name,
                adapter_name=name,
                corpus=trainer_pb2.CorpusSnapshot(path=str(examples_path)),
                seed=seed,
                schedule=common_pb2.TrainingSchedule(epochs=epochs, warmup_steps=min(20, total // 10)),
            ),
            timeout=30,
        )
        job = None
        for update in stub.WatchFineTune(trainer_pb2.WatchFineTuneRequest(job_id=name), timeout=3600):
            if update.HasField("job"):
                job = update.job
        end_to_end = time.perf_counter() - started
        assert job is not None and job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED, job
        adapter = json.loads(
            (
                Path(stub.GetAdapter(trainer_pb2.GetAdapterRequest(name=name), timeout=5).adapter.path)
                / "archloop_adapter.json"
            ).read_text()
        )
    finally:
        proc.stop(30)
    return {
        "tokens": adapter["tokens"],
        "train_seconds": adapter["train_seconds"],
        "tokens_per_second": adapter["tokens"] / adapter["train_seconds"],
        "end_to_end_seconds": end_to_end,
    }


def markdown(r: dict) -> str:
    machine = report_machine()
    return "\n".join(
        [
            SECTION_START,
            "## Trainer service",
            "",
            f"`python bench/trainer_bench.py` on {datetime.now(UTC):%Y-%m-%d} ({machine}).",
            f"LoRA (rank 32) on the tiny base model, {r['examples']} corpus examples × {r['epochs']} epochs,",
            f"batch 1 × accumulation 4, {THREADS} torch threads, CPU;",
            f"{r['rounds']} alternating rounds. Goal (issue 6): service ≥ 0.95× a plain loop on the same "
            "model and data.",
            "",
            "| measure | plain loop | trainer service | ratio |",
            "|---|---|---|---|",
            f"| steady-state tokens/s (median) | {r['baseline_tokens_per_second']:.0f} | "
            f"{r['service_tokens_per_second']:.0f} | **{r['ratio']:.3f}×** |",
            f"| tokens per run | {r['baseline_tokens']:,} | {r['service_tokens']:,} | |",
            f"| end-to-end job time (median, s) | {r['baseline_train_seconds']:.1f} (training only) | "
            f"{r['service_end_to_end_seconds']:.1f} (request to SUCCEEDED) | |",
            "",
            f"Corpus build (`archloop corpus build`, 10,482 files → {r['corpus_examples']:,} examples): "
            f"{r['corpus_build_seconds']:.0f} s.",
            "",
            "Raw figures: `bench/results/trainer.json`.",
            SECTION_END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        workdir = Path(tmp)
        built = corpus_build.build_corpus(workdir / "corpus")
        print(f"corpus build: {built.seconds:.0f} s", flush=True)
        examples = bench_examples(workdir / "corpus", args.examples, workdir / "bench.jsonl")
        baseline, service = [], []
        for i in range(args.rounds):
            baseline.append(plain_loop(examples, args.epochs, seed=i))
            print(f"round {i}: plain loop {baseline[-1]['tokens_per_second']:.0f} tokens/s", flush=True)
            service.append(service_run(examples, args.epochs, i, workdir, f"bench-{i}"))
            print(f"round {i}: service {service[-1]['tokens_per_second']:.0f} tokens/s", flush=True)
    median = statistics.median
    result = {
        "examples": args.examples,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "baseline_tokens_per_second": median(r["tokens_per_second"] for r in baseline),
        "service_tokens_per_second": median(r["tokens_per_second"] for r in service),
        "baseline_tokens": baseline[0]["tokens"],
        "service_tokens": service[0]["tokens"],
        "baseline_train_seconds": median(r["train_seconds"] for r in baseline),
        "service_end_to_end_seconds": median(r["end_to_end_seconds"] for r in service),
        "corpus_build_seconds": built.seconds,
        "corpus_examples": built.manifest["funnel"]["examples"],
        "runs": {"baseline": baseline, "service": service},
    }
    result["ratio"] = result["service_tokens_per_second"] / result["baseline_tokens_per_second"]
    publish("trainer", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
