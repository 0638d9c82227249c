"""Training the tiny base model (archloop.basemodel) from scratch on the LEMUR corpus, or fine-tuning a
pretrained one on it: `archloop base-model train`.

    data        every corpus example whose rendered chat fits the context, split by model name into
                train and held out (`_training_data`); edit pairs a share of the training examples;
                packed into context-sized blocks (an end token closes each example), shuffled with
                the seed
    model       a new GPT-2 of the settings' size with a new tokenizer, or the pretrained model with
                its own (`_model_and_tokenizer`)
    training    AdamW, linear warm-up then cosine, gradient clip, checkpoints, early stop on the
                held-out loss (`_Pretraining`)
    result      the model folder and its training.json (`_write_model`)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archloop import corpus
from archloop.basemodel import (
    TINY_MODEL_NAME,
    BaseModelSettings,
    base_model_sha256,
    encode_example,
    model_hash,
    next_token_loss,
    resolve_base_model,
    split_by_model,
    train_tokenizer,
)
from archloop.paths import archloop_home
from archloop.prompts import FIM_TOKENS

Pairs = list[tuple[list[int], list[int]]]  # (token ids, loss mask) per example or block


def train_base_model(
    corpus_dir: Path,
    out_dir: Path,
    settings: BaseModelSettings | None = None,
    progress: Callable[[dict], None] = lambda event: None,
    checkpoint_dir: Path | None = None,
    init_from: str = "",
    edits_dir: Path | None = None,
    edit_share: float = 0.0,
) -> dict:
    """Train tokenizer and model from the corpus; write the model folder; return its training record.

    With `init_from` (a base model reference: `smollm2-135m-instruct`, a model folder) that pretrained
    model is fine-tuned instead (all its weights, its own tokenizer and chat template, a context of
    at most its own), and the folder written is that model fine-tuned on the corpus.

    Every `checkpoint_every_steps` the model, optimizer, sampling order and history are saved to
    `checkpoint_dir` (default under $ARCHLOOP_HOME); a run started again with the same corpus and
    settings resumes there, with any `steps`: a longer run continues, one no longer than the checkpoint
    writes the checkpoint's model (`steps_run` says how far it went). Training stops at `steps`, or
    earlier once the held-out code loss has not improved by 0.5 % over `patience_evals` evaluations.

    With `edits_dir` (tools/edit_pairs.py: delta and factor pairs of verified mutations), edit pairs make
    up `edit_share` of the training examples that fit the context (a seeded sample); they are held out
    with their parent program, so no held-out model is seen through an edit of it.
    """
    import torch

    settings = settings or BaseModelSettings()
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir(out_dir))
    manifest = corpus.load_manifest(corpus_dir)
    identity: dict[str, Any] = {
        "settings": asdict(settings),
        "manifest_sha256": corpus.manifest_sha256(corpus_dir),
    }
    edits, edits_manifest = _edits(edits_dir, edit_share, identity)
    if init_from:
        identity["init_from"] = init_from
    checkpoint = _load_checkpoint(checkpoint_dir, identity)
    examples = list(corpus.read_jsonl(Path(corpus_dir) / "examples.jsonl"))
    train_examples, held_examples = split_by_model(examples, settings.holdout_share, settings.seed)
    model, tokenizer, context = _model_and_tokenizer(
        settings, init_from, checkpoint, checkpoint_dir, train_examples
    )
    if any(e.get("mode") in ("region", "fim") for e in edits):
        fit_vocabulary(model, tokenizer, FIM_TOKENS)  # region examples hold the hole in FIM tokens
    data = _training_data(tokenizer, context, train_examples, held_examples, edits, edit_share, settings.seed)
    progress({"event": "data_ready", "train_examples_fitting": len(data.train_ids),
              "edit_examples": data.edits, "train_blocks": len(data.train_blocks),
              "held_out_blocks": len(data.held_blocks), "answer_token_share": round(data.answer_share, 4),
              "resumed_at_step": checkpoint["step"] if checkpoint else 0})  # fmt: skip
    run = _Pretraining(settings, model, tokenizer, data, checkpoint_dir, identity, started)
    if checkpoint is not None:
        run.restore(checkpoint)
    run.train(progress)
    summary = {"init_from": init_from, "train_examples": len(train_examples), "manifest": manifest,
               "edits": {**identity["edits"], "version": edits_manifest["version"], "examples": data.edits}
               if edits else None}  # fmt: skip
    return _write_model(run, Path(out_dir), Path(corpus_dir), summary)


def default_checkpoint_dir(out_dir: Path) -> Path:
    tag = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]
    return archloop_home() / "base-model-checkpoints" / tag


def fit_vocabulary(model, tokenizer, special: tuple[str, ...]) -> list[str]:
    """Add the `special` tokens the tokenizer lacks (each one id, never split) and give the model an
    embedding row for every token of the tokenizer (new rows start at the mean embedding); the tokens
    added. A resumed run's tokenizer has them already: only the model grows."""
    missing = [token for token in special if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return missing


def _edits(edits_dir: Path | None, edit_share: float, identity: dict) -> tuple[list[dict], dict]:
    """The edit pairs and their manifest when a share of them is asked for (their identity joins the
    run's); none otherwise."""
    if edits_dir is None or edit_share <= 0:
        return [], {}
    if not 0 < edit_share < 1:
        raise ValueError(f"edit_share {edit_share} must be in (0, 1)")
    manifest = json.loads((Path(edits_dir) / "manifest.json").read_text())
    identity["edits"] = {"sha256": manifest["edits_sha256"], "share": edit_share}
    return list(corpus.read_jsonl(Path(edits_dir) / "edits.jsonl")), manifest


def _model_and_tokenizer(
    settings: BaseModelSettings,
    init_from: str,
    checkpoint: dict | None,
    checkpoint_dir: Path,
    train: list[dict],
) -> tuple[Any, Any, int]:
    """(model, tokenizer, context): the pretrained model and its tokenizer, or a new GPT-2 with a new
    tokenizer (a resumed run's tokenizer from its checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    pretrained = None
    if init_from:
        resolved = resolve_base_model(init_from)
        pretrained = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    if checkpoint is not None:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir / "tokenizer")
    elif pretrained is not None:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    else:
        tokenizer = train_tokenizer((m["content"] for e in train for m in e["messages"]), settings.vocab_size)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if pretrained is not None:
        context = min(
            settings.context_tokens,
            int(getattr(pretrained.config, "max_position_embeddings", settings.context_tokens)),
        )
        return pretrained, tokenizer, context
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=settings.context_tokens,
        n_embd=settings.n_embd,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config), tokenizer, settings.context_tokens


@dataclass
class _Data:
    train_ids: Pairs  # the training examples that fit the context (edit pairs included)
    held_ids: Pairs
    train_blocks: Pairs
    held_blocks: Pairs
    edits: int  # edit pairs among train_ids
    answer_share: float  # the share of training tokens the loss counts


def _training_data(
    tokenizer,
    context: int,
    train: list[dict],
    held: list[dict],
    edits: list[dict],
    edit_share: float,
    seed: int,
) -> _Data:
    def encode(batch: list[dict]) -> Pairs:
        pairs = [encode_example(tokenizer, e["messages"]) for e in batch]
        return [pair for pair in pairs if len(pair[0]) <= context]

    train_ids, held_ids = encode(train), encode(held)
    edit_ids: Pairs = []
    if edits:
        held_models = {e["model"] for e in held}
        fitting = encode([e for e in edits if e["parent"] not in held_models])
        wanted = min(len(fitting), round(len(train_ids) * edit_share / (1 - edit_share)))
        edit_ids = random.Random(seed).sample(fitting, wanted)
        train_ids = train_ids + edit_ids
    train_blocks, held_blocks = _pack(train_ids, context, seed), _pack(held_ids, context, seed)
    if not train_blocks:
        raise corpus.CorpusError(f"no training example fits {context} tokens ({len(train)} examples)")
    answer_share = sum(sum(m) for _, m in train_ids) / max(1, sum(len(ids) for ids, _ in train_ids))
    return _Data(train_ids, held_ids, train_blocks, held_blocks, len(edit_ids), answer_share)


def _pack(sequences: Pairs, block: int, seed: int) -> Pairs:
    """Concatenate shuffled (ids, mask) sequences and cut into blocks of block+1 tokens (inputs and
    shifted labels) with their masks."""
    order = list(range(len(sequences)))
    random.Random(seed).shuffle(order)
    stream = [token for i in order for token in sequences[i][0]]
    mask = [m for i in order for m in sequences[i][1]]
    return [
        (stream[i : i + block + 1], mask[i : i + block + 1]) for i in range(0, len(stream) - block, block)
    ]


def _learning_rate(step: int, s: BaseModelSettings) -> float:
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    floor = s.learning_rate * s.min_learning_rate_ratio
    return floor + (s.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class _Pretraining:
    """The training run's state: model, optimiser, sampling order, history and counts, saved whole in
    each checkpoint."""

    def __init__(self, settings: BaseModelSettings, model, tokenizer, data: _Data, checkpoint_dir: Path,
                 identity: dict, started: float) -> None:  # fmt: skip
        import torch

        self.settings, self.model, self.tokenizer, self.data = settings, model, tokenizer, data
        self.checkpoint_dir, self.identity, self.started = checkpoint_dir, identity, started
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.95))
        self.parameters = sum(p.numel() for p in model.parameters())
        self.rng = random.Random(settings.seed)
        self.order: list[int] = []
        self.history: list[dict] = []
        self.tokens_seen = self.answer_tokens_seen = self.first_step = 0
        self.elapsed_before = 0.0
        self.stopped_early = False

    def restore(self, checkpoint: dict) -> None:
        import torch

        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.rng.setstate(checkpoint["rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.order, self.history = checkpoint["order"], checkpoint["history"]
        self.tokens_seen, self.answer_tokens_seen = (
            checkpoint["tokens_seen"],
            checkpoint["answer_tokens_seen"],
        )
        self.first_step, self.elapsed_before = checkpoint["step"], checkpoint["seconds"]
        self.stopped_early = bool(checkpoint.get("stopped_early"))

    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def held_out_loss(self) -> float:
        import torch

        self.model.eval()
        losses = []
        with torch.no_grad():
            for ids, mask in self.data.held_blocks:
                losses.append(float(next_token_loss(self.model, torch.tensor([ids]), torch.tensor([mask]))))
        self.model.train()
        return sum(losses) / len(losses) if losses else float("nan")

    def train(self, progress: Callable[[dict], None]) -> None:
        """From the first step not yet taken to `steps`, or an early stop; a checkpoint every
        `checkpoint_every_steps` and at the stop."""
        s = self.settings
        self.model.train()
        for step in range(self.first_step, self.first_step if self.stopped_early else s.steps):
            record: dict[str, Any] = {"step": step + 1, "loss": round(self._step(step), 4),
                                      "lr": _learning_rate(step, s), "tokens": self.tokens_seen,
                                      "seconds": round(self.seconds(), 1)}  # fmt: skip
            if (step + 1) % s.eval_every_steps == 0 or step + 1 == s.steps:
                record["held_out_loss"] = round(self.held_out_loss(), 4)
            self.history.append(record)
            progress({"event": "step", **record})
            if "held_out_loss" in record and _stalled(self.history, s.patience_evals):
                self.stopped_early = True
            if (step + 1) % s.checkpoint_every_steps == 0 or self.stopped_early:
                self.save_checkpoint(step + 1)
            if self.stopped_early:
                break

    def _step(self, step: int) -> float:
        """One optimiser step over `accumulation_steps` micro-batches drawn in the seeded order; its loss."""
        import torch

        s, blocks = self.settings, self.data.train_blocks
        step_loss = 0.0
        for _ in range(s.accumulation_steps):
            if len(self.order) < s.micro_batch_blocks:
                self.order.extend(self.rng.sample(range(len(blocks)), len(blocks)))
            picked = [blocks[self.order.pop()] for _ in range(s.micro_batch_blocks)]
            batch = torch.tensor([ids for ids, _ in picked])
            mask = torch.tensor([m for _, m in picked])
            loss = next_token_loss(self.model, batch, mask) / s.accumulation_steps
            loss.backward()
            step_loss += loss.item()
            self.tokens_seen += batch.numel() - batch.size(0)
            self.answer_tokens_seen += int(mask[:, 1:].sum())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(step, s)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss

    def save_checkpoint(self, step: int) -> None:
        import torch

        staging = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".saving")
        staging.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(staging / "tokenizer")
        state = {
            "identity": self.identity,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "order": self.order,
            "history": self.history,
            "tokens_seen": self.tokens_seen,
            "answer_tokens_seen": self.answer_tokens_seen,
            "seconds": self.seconds(),
            "stopped_early": self.stopped_early,
        }
        torch.save(state, staging / "state.pt")
        if self.checkpoint_dir.exists():
            shutil.rmtree(self.checkpoint_dir)
        staging.rename(self.checkpoint_dir)  # a crash leaves the last whole checkpoint in place


def _write_model(run: _Pretraining, out_dir: Path, corpus_dir: Path, summary: dict) -> dict:
    """The model folder (fp16 for the tiny model, bf16 for a pretrained one) and its training.json."""
    import torch

    init_from, history, data = summary["init_from"], run.history, run.data
    out_dir.mkdir(parents=True, exist_ok=True)
    # fp16 halves the packaged tiny model; a pretrained model keeps the range of bf16
    run.model.to(torch.bfloat16 if init_from else torch.float16).save_pretrained(
        out_dir, safe_serialization=True
    )
    run.tokenizer.save_pretrained(out_dir)
    evaluated = [h for h in history if "held_out_loss" in h]
    if not evaluated or history[-1] is not evaluated[-1]:
        run.model.to(torch.float32)
        evaluated.append({**history[-1], "held_out_loss": round(run.held_out_loss(), 4)})
    manifest = summary["manifest"]
    record = {
        "name": out_dir.name if init_from else TINY_MODEL_NAME,
        "architecture": type(run.model).__name__,
        "init_from": init_from,
        "init_from_sha256": base_model_sha256(resolve_base_model(init_from)) if init_from else "",
        "parameters": run.parameters,
        "settings": asdict(run.settings),
        "loss": "next-token cross-entropy on the answer's tokens only (the prompt is masked out)",
        "corpus": {
            "version": manifest["version"],
            "manifest_sha256": corpus.manifest_sha256(corpus_dir),
            "examples_sha256": manifest["files"]["examples.jsonl"]["sha256"],
            "train_examples": summary["train_examples"],
            "train_examples_fitting_context": len(data.train_ids),
            "held_out_examples_fitting_context": len(data.held_ids),
            "train_blocks": len(data.train_blocks),
            "answer_token_share": round(data.answer_share, 4),
        },
        "edits": summary["edits"],
        "steps_run": history[-1]["step"],
        "stopped_early": run.stopped_early,
        "tokens_seen": run.tokens_seen,
        "answer_tokens_seen": run.answer_tokens_seen,
        "final_train_loss": round(sum(h["loss"] for h in history[-20:]) / len(history[-20:]), 4),
        "final_held_out_loss": evaluated[-1]["held_out_loss"],
        "duration_seconds": round(run.seconds(), 1),
        "tokens_per_second": round(run.tokens_seen / run.seconds(), 1),
        "history": evaluated,
    }
    record["model_sha256"] = model_hash(out_dir)  # training.json itself is not part of the hash
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _stalled(history: list[dict], patience: int) -> bool:
    """The last `patience` held-out losses are all within 0.5 % of the best before them."""
    losses = [h["held_out_loss"] for h in history if "held_out_loss" in h]
    if len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) > best_before * 0.995


def _load_checkpoint(checkpoint_dir: Path, identity: dict) -> dict | None:
    """The saved state when it belongs to this corpus and these settings (any --steps), else None (a
    fresh start)."""
    import torch

    path = checkpoint_dir / "state.pt"
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    return state if _resumable(state.get("identity") or {}) == _resumable(identity) else None


def _resumable(identity: dict) -> dict:
    """A run's identity less its length and its thread count: a resumed run may be given another
    --steps (cut short or extended; the learning-rate schedule follows the new total from the step it
    resumes at) and another --threads (a machine that was shared is free now)."""
    settings = {k: v for k, v in identity.get("settings", {}).items() if k not in ("steps", "threads")}
    return {**identity, "settings": settings}
