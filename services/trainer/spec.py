"""What a fine-tune job is asked to do: base model, corpus snapshot, LoRA settings, schedule
(docs/method.md#corpus-and-fine-tuning).

Defaults are the paper's: LoRA rank 32, alpha 32, dropout 0.05 on the attention and MLP projections;
5 epochs, lr 1e-5, batch 1 × gradient accumulation 4, cosine schedule with 20 warm-up steps, weight
decay 0.01, max grad norm 1.0. `validate()` names the offending field of every bad value.

This module imports neither grpc nor torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from archloop.errors import InvalidArgument

# Attention and MLP projections by architecture (`config.model_type`). A model type not listed gets
# every Linear/Conv1D layer inside its transformer blocks (see lora.default_target_modules).
TARGET_MODULES: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
}
SCHEDULERS = ("cosine", "linear", "constant")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INITS = ("fresh", "continue")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()  # empty = TARGET_MODULES of the architecture


@dataclass(frozen=True)
class Schedule:
    epochs: int = 5
    learning_rate: float = 1e-5
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"
    max_seq_len_tokens: int = 0  # 0 = the model's context length


@dataclass(frozen=True)
class FineTuneSpec:
    job_id: str
    adapter_name: str
    corpus_path: str
    experiment_id: str = ""
    cycle: int = 0
    base_model: str = ""  # '' = the tiny packaged model
    corpus_manifest_sha256: str = ""
    lora: LoraConfig = field(default_factory=LoraConfig)
    schedule: Schedule = field(default_factory=Schedule)
    seed: int = 0
    init: str = "fresh"
    init_adapter_path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FineTuneSpec:
        raw = json.loads(text)
        raw["lora"] = LoraConfig(**{**raw["lora"], "target_modules": tuple(raw["lora"]["target_modules"])})
        raw["schedule"] = Schedule(**raw["schedule"])
        return cls(**raw)

    def output_subdir(self) -> Path:
        """Where the adapter goes under the artifacts directory: <experiment>/cycle-<n>/ (or its name)."""
        if self.experiment_id:
            return Path(self.experiment_id) / f"cycle-{self.cycle}"
        return Path("adapters") / self.adapter_name

    def validate(self) -> None:
        if not self.job_id:
            raise InvalidArgument("job_id", "must not be empty")
        if len(self.job_id) > 128:
            raise InvalidArgument("job_id", "must be at most 128 characters")
        if not ADAPTER_NAME.match(self.adapter_name):
            raise InvalidArgument(
                "adapter_name", f"{self.adapter_name!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if self.experiment_id and not ADAPTER_NAME.match(self.experiment_id):
            raise InvalidArgument("experiment_id", "must be letters, digits, '.', '_' or '-'")
        if self.cycle < 0:
            raise InvalidArgument("cycle", f"{self.cycle} must not be negative")
        if not self.corpus_path:
            raise InvalidArgument("corpus.path", "must name a JSONL file of chat examples")
        lora, s = self.lora, self.schedule
        checks = [
            ("lora.rank", lora.rank > 0, f"{lora.rank} must be positive"),
            ("lora.alpha", lora.alpha > 0, f"{lora.alpha} must be positive"),
            ("lora.dropout", 0 <= lora.dropout < 1, f"{lora.dropout} must be in [0, 1)"),
            ("schedule.epochs", s.epochs > 0, f"{s.epochs} must be positive"),
            ("schedule.learning_rate", s.learning_rate > 0, f"{s.learning_rate} must be positive"),
            ("schedule.batch_size", s.batch_size > 0, f"{s.batch_size} must be positive"),
            ("schedule.gradient_accumulation_steps", s.gradient_accumulation_steps > 0, "must be positive"),
            ("schedule.warmup_steps", s.warmup_steps >= 0, f"{s.warmup_steps} must not be negative"),
            ("schedule.weight_decay", s.weight_decay >= 0, f"{s.weight_decay} must not be negative"),
            ("schedule.max_grad_norm", s.max_grad_norm > 0, f"{s.max_grad_norm} must be positive"),
            (
                "schedule.lr_scheduler",
                s.lr_scheduler in SCHEDULERS,
                f"must be one of {', '.join(SCHEDULERS)}",
            ),
            ("schedule.max_seq_len_tokens", s.max_seq_len_tokens >= 0, "must not be negative"),
            ("init", self.init in INITS, f"must be one of {', '.join(INITS)}"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise InvalidArgument(name, problem)
        if self.init == "continue" and not self.init_adapter_path:
            raise InvalidArgument("init_adapter", "continuing needs the previous adapter")
