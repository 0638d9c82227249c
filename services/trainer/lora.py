"""One LoRA fine-tune, run in a worker process: data → peft model → training loop → adapter.

    data        every chat example of the corpus JSONL rendered with the tokenizer's chat template;
                labels are -100 on the prompt (system + user + the assistant header), so the loss is
                only on the assistant's tokens (the code and its closing token). Examples longer than
                max_seq_len are dropped (a truncated program would teach the model never to finish)
                and counted.
    model       base in fp32 on CPU, bf16 on a GPU; LoRA (peft) on the architecture's attention and
                MLP projections; a fresh adapter, or the previous cycle's adapter trained further. The
                base model's own dropout (GPT-2's 0.1 on attention weights, residuals and embeddings,
                set for pretraining) is off: the base weights are frozen, LoRA's dropout regularises
                the adapter, and on a CPU the random masks of a 1,024-token sequence were more than half
                of a step (docs/benchmarks.md#fine-tune-speed-and-the-loops-wall-clock).
    precision   fp32 weights; on a CPU with native bf16, the forward and backward under bf16 autocast
                after a loss-parity check against fp32 (services.trainer.precision).
    optimiser   AdamW, or bitsandbytes' 8-bit paged AdamW when a GPU and bitsandbytes exist; the
                transformers scheduler (cosine by default) with warm-up; gradient accumulation; clip.
    checkpoints every `checkpoint_every_steps` optimiser steps: adapter, optimiser, scheduler, RNG and
                the data position, written to a temporary folder then renamed, so a crash leaves the
                previous checkpoint whole; `resume` continues from it.

Progress goes to the parent as dicts on a queue: {"kind": "step", ...}, {"kind": "checkpoint", ...},
{"kind": "done", ...}; a failure raises (the parent reports it). `cancel` is checked between micro-
batches, so a cancel takes effect within one forward/backward pass; a shutdown first saves a
checkpoint at the last optimiser step (the micro-batches since are redone on resume).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archloop.basemodel import base_model_sha256, load_base, weights_sha256
from archloop.errors import FailedPrecondition, InvalidArgument
from services.trainer import precision
from services.trainer.data import Example, batches, collate, encode_examples
from services.trainer.spec import TARGET_MODULES, FineTuneSpec
from services.trainer.state import (
    CHECKPOINT,
    load_checkpoint,
    make_optimizer,
    optimiser_step,
    save_checkpoint,
)

ADAPTER_METADATA = "archloop_adapter.json"


class Cancelled(Exception):
    """The job stopped between two micro-batches: cancelled, or interrupted by a shutdown."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def warm_up() -> None:
    """Import what a fine-tune uses (torch, transformers' causal LMs and scheduler, peft): a warm worker
    does it before its first job."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, get_scheduler  # noqa: F401
    from transformers.models.gpt2 import modeling_gpt2  # noqa: F401


def default_target_modules(model) -> list[str]:
    """The attention and MLP projections of the architecture at hand."""
    known = TARGET_MODULES.get(model.config.model_type)
    if known:
        return known
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and (".layers." in name or ".h." in name)
    }
    if not names:
        raise InvalidArgument(
            "lora.target_modules", f"no projection layers found in {model.config.model_type}"
        )
    return sorted(names)


def without_base_dropout(model) -> int:
    """Set every dropout of the (not yet LoRA-wrapped) base model to 0; how many there were."""
    import torch

    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    for module in dropouts:
        module.p = 0.0
    return len(dropouts)


def answer_loss(model, ids, labels, mask):
    """The mean next-token cross-entropy over the labelled tokens (what `labels=` computes), with the LM
    head run only at the positions that predict one: the prompt's ~300 positions predict nothing the
    loss counts, and the head with its softmax over the vocabulary was a sixth of a step."""
    import torch

    targets = labels[:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)  # positions t whose token t+1 is in the loss
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # (B, K, V)
    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets[:, keep].flatten(), ignore_index=-100
    )


@dataclass
class _Job:
    """What a fine-tune holds while it trains (from `_set_up`)."""

    model: Any
    pad_id: int
    resolved: Path
    examples: list[Example]
    too_long: int
    max_len: int
    target_modules: list[str]
    optimizer: Any
    optimizer_name: str
    scheduler: Any
    arithmetic: precision.Precision
    total_steps: int
    position: dict  # where training stands: step, epoch, batch (of the epoch), tokens


def run_fine_tune(
    spec: FineTuneSpec,
    job_dir: Path,
    artifacts_dir: Path,
    emit: Callable[[dict], None],
    stop_requested: Callable[[], str],
    resume: bool = False,
    checkpoint_every_steps: int = 50,
    threads: int = 0,
    autocast: str = "auto",
) -> dict:
    """Train; write the adapter under artifacts_dir/<spec.output_subdir()>; return its metadata."""
    import torch

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    job_dir.mkdir(parents=True, exist_ok=True)
    job = _set_up(spec, job_dir, device, resume, autocast)
    emit({"kind": "started", "total_steps": job.total_steps, "examples": len(job.examples),
          "too_long": job.too_long, "resumed_from_step": job.position["step"], "device": device,
          "optimizer": job.optimizer_name, "autocast": job.arithmetic.autocast})  # fmt: skip
    train_started = time.perf_counter()
    losses = _train(spec, job, job_dir, device, emit, stop_requested, checkpoint_every_steps)
    train_seconds = time.perf_counter() - train_started
    metadata = _write_adapter(spec, job, Path(artifacts_dir), device, losses, train_seconds, started)
    shutil.rmtree(job_dir / CHECKPOINT, ignore_errors=True)
    emit({"kind": "done", "adapter": metadata})
    return metadata


def _set_up(spec: FineTuneSpec, job_dir: Path, device: str, resume: bool, autocast: str) -> _Job:
    """The base model (its own dropout off) with a fresh or continued adapter, the examples that fit,
    the optimiser and schedule, the arithmetic, and where a resumed job stands."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import get_scheduler

    model, tokenizer, resolved = load_base(spec.base_model, device)
    without_base_dropout(model)
    context = int(
        getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 2048)
    )
    # never past the model's context: longer sequences have no position embeddings
    max_len = min(spec.schedule.max_seq_len_tokens or context, context)
    examples, too_long = encode_examples(Path(spec.corpus_path), tokenizer, max_len)
    if not examples:
        raise FailedPrecondition(f"no example of the corpus fits {max_len} tokens ({too_long} too long)")
    checkpoint = job_dir / CHECKPOINT
    resuming = resume and (checkpoint / "trainer_state.pt").exists()
    target_modules = list(spec.lora.target_modules) or default_target_modules(model)
    if resuming or spec.init == "continue":
        source = checkpoint if resuming else Path(spec.init_adapter_path)
        model = PeftModel.from_pretrained(model, source, is_trainable=True)
    else:
        config = LoraConfig(
            r=spec.lora.rank,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=target_modules,
            task_type="CAUSAL_LM",
            fan_in_fan_out=model.config.model_type in ("gpt2", "gpt_bigcode"),  # Conv1D layers
        )
        model = get_peft_model(model, config)
    optimizer, optimizer_name = make_optimizer(model, spec, device)
    s = spec.schedule
    steps_per_epoch = math.ceil(math.ceil(len(examples) / s.batch_size) / s.gradient_accumulation_steps)
    total_steps = steps_per_epoch * s.epochs
    scheduler = get_scheduler(
        s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=total_steps
    )
    arithmetic = precision.choose(
        autocast, device, model, *collate(examples[:1], tokenizer.pad_token_id, device)
    )
    position = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0}
    if resuming:
        position = load_checkpoint(checkpoint, optimizer, scheduler)
    return _Job(model, tokenizer.pad_token_id, resolved, examples, too_long, max_len, target_modules,
                optimizer, optimizer_name, scheduler, arithmetic, total_steps, position)  # fmt: skip


def _train(
    spec: FineTuneSpec,
    job: _Job,
    job_dir: Path,
    device: str,
    emit: Callable[[dict], None],
    stop_requested: Callable[[], str],
    checkpoint_every_steps: int,
) -> list[float]:
    """The epochs from where the job stands: micro-batches accumulated into optimiser steps, each step
    reported, a checkpoint every `checkpoint_every_steps` and at a shutdown; the steps' losses."""

    s, model, position = spec.schedule, job.model, job.position
    model.train()
    step, tokens = position["step"], position["tokens"]
    window_started, window_tokens = time.perf_counter(), 0
    losses: list[float] = []

    def checkpoint(epoch: int, batch: int) -> None:
        save_checkpoint(job_dir, model, job.optimizer, job.scheduler,
                         {"step": step, "epoch": epoch, "batch": batch, "tokens": tokens})  # fmt: skip
        emit({"kind": "checkpoint", "step": step})

    for epoch in range(position["epoch"], s.epochs):
        epoch_batches = batches(job.examples, s.batch_size, spec.seed, epoch)
        first = position["batch"] if epoch == position["epoch"] else 0
        micro, step_loss = 0, 0.0
        for index in range(first, len(epoch_batches)):
            reason = stop_requested()  # "", "cancel" or "shutdown"
            if reason == "shutdown":  # keep the work since the last checkpoint: the job will resume
                checkpoint(epoch, index - micro)
            if reason:
                raise Cancelled(reason)
            ids, labels, mask = collate(epoch_batches[index], job.pad_id, device)
            # Weight each micro-batch by its share of the optimiser step's batches.
            group = min(s.gradient_accumulation_steps, len(epoch_batches) - (index - micro))
            with job.arithmetic.context():
                loss = answer_loss(model, ids, labels, mask) / group
            loss.backward()
            step_loss += loss.item()
            micro += 1
            window_tokens += int(mask.sum())
            if micro < group and index + 1 < len(epoch_batches):
                continue
            learning_rate = optimiser_step(model, job.optimizer, job.scheduler, s.max_grad_norm)
            step += 1
            losses.append(step_loss)
            elapsed = time.perf_counter() - window_started
            tokens += window_tokens
            emit({"kind": "step", "step": step, "total_steps": job.total_steps, "epoch": epoch + 1,
                  "loss": step_loss, "learning_rate": learning_rate,
                  "tokens_per_second": window_tokens / elapsed if elapsed > 0 else 0.0,
                  "eta_seconds": (job.total_steps - step) * elapsed, "tokens": tokens})  # fmt: skip
            window_started, window_tokens = time.perf_counter(), 0
            micro, step_loss = 0, 0.0
            if checkpoint_every_steps and step % checkpoint_every_steps == 0 and step < job.total_steps:
                last = index + 1 >= len(epoch_batches)
                checkpoint(epoch + 1, 0) if last else checkpoint(epoch, index + 1)
    position.update(step=step, tokens=tokens)
    return losses


def _write_adapter(
    spec: FineTuneSpec,
    job: _Job,
    artifacts_dir: Path,
    device: str,
    losses: list[float],
    train_seconds: float,
    started: float,
) -> dict:
    """The adapter and its metadata, written to a staging folder and renamed into place; the metadata."""
    out_dir = artifacts_dir / spec.output_subdir()
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    job.model.save_pretrained(staging)
    final_loss = sum(losses[-10:]) / len(losses[-10:]) if losses else float("nan")
    metadata = {
        "name": spec.adapter_name,
        "job_id": spec.job_id,
        "experiment_id": spec.experiment_id,
        "cycle": spec.cycle,
        "base_model": str(job.resolved),
        "base_model_sha256": base_model_sha256(job.resolved),
        "corpus_path": spec.corpus_path,
        "corpus_manifest_sha256": spec.corpus_manifest_sha256,
        "lora": {**asdict(spec.lora), "target_modules": job.target_modules},
        "schedule": {**asdict(spec.schedule), "max_seq_len_tokens": job.max_len},
        "init": spec.init,
        "init_adapter_path": spec.init_adapter_path,
        "seed": spec.seed,
        "optimizer": job.optimizer_name,
        "device": device,
        "precision": job.arithmetic.as_json(),
        "examples": len(job.examples),
        "examples_too_long": job.too_long,
        "steps": job.position["step"],
        "tokens": job.position["tokens"],
        "train_seconds": train_seconds,  # first micro-batch to last optimiser step (this run)
        "final_loss": final_loss,
        "first_loss": losses[0] if losses else float("nan"),
        "duration_seconds": time.perf_counter() - started,
        "weights_sha256": weights_sha256(staging),
        "created_unix_ms": int(time.time() * 1000),
    }
    (staging / ADAPTER_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out_dir)
    metadata["path"] = str(out_dir)
    return metadata
