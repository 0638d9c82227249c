"""Experiment configuration: a YAML file shaped like `archloop.v1.ExperimentConfig`, CLI overrides, defaults
and validation whose errors name the field.

The proto message is the schema (the file's keys are its field names; enum values may be written short:
`mode: delta`, `selection_policy: top_k`), so what `archloop run` reads, what StartExperiment carries and
what the ledger stores are one thing. `with_defaults` fills every zero with the embedded default, then
`validate` checks ranges. Zero means "default" everywhere except in the proto's `optional` fields, where a
zero is meaningful (seed 0, temperature 0 = greedy, no dropout, no momentum, no warm-up, no weight decay,
no promotion): there a field the file sets is kept, 0 included (explicit presence survives the merge).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from archloop import datasets
from archloop.errors import InvalidArgument
from archloop.v1 import common_pb2, controller_pb2, trainer_pb2

CONFIG_DIR = Path(__file__).with_name("configs")
EMBEDDED = CONFIG_DIR / "embedded.yaml"
_ENUMS: dict[str, tuple[str, EnumTypeWrapper]] = {
    "mode": ("GENERATION_MODE_", common_pb2.GenerationMode),
    "temperature_schedule": ("TEMPERATURE_SCHEDULE_", controller_pb2.TemperatureSchedule),
    "selection_policy": ("SELECTION_POLICY_", controller_pb2.SelectionPolicy),
    "parent_policy": ("PARENT_POLICY_", controller_pb2.ParentPolicy),
    "factor_policy": ("FACTOR_POLICY_", controller_pb2.FactorPolicy),
    "adapter_init": ("ADAPTER_INIT_", trainer_pb2.AdapterInit),
    "architecture_novelty": ("ARCHITECTURE_NOVELTY_", controller_pb2.ArchitectureNovelty),
}


def _expand_enums(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in _ENUMS and isinstance(value, str):
                prefix, enum = _ENUMS[key]
                full = value if value.upper().startswith(prefix) else prefix + value.upper()
                names = enum.keys()  # a proto enum wrapper: `in` needs its names
                if full not in names:
                    short = [k[len(prefix) :].lower() for k in names if not k.endswith("UNSPECIFIED")]
                    raise InvalidArgument(where, f"{value!r} is not one of {short}")
                value = full
            out[key] = _expand_enums(value, where)
        return out
    return node


def from_mapping(data: dict, source: str = "config") -> controller_pb2.ExperimentConfig:
    if not isinstance(data, dict):
        raise InvalidArgument(source, "must be a mapping of ExperimentConfig fields")
    config = controller_pb2.ExperimentConfig()
    try:
        json_format.ParseDict(_expand_enums(data), config)
    except json_format.ParseError as exc:
        first = str(exc).splitlines()[0].replace('Message type "archloop.v1.', '"')
        raise InvalidArgument(source, first) from None
    return config


def load_file(path: Path) -> controller_pb2.ExperimentConfig:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument("--config", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument("--config", f"{path} is not YAML: {exc}") from None
    return from_mapping(data or {}, str(path))


def embedded() -> controller_pb2.ExperimentConfig:
    """The laptop default: digits, the tiny base model, 3 cycles × 8 candidates."""
    return load_file(EMBEDDED)


def with_defaults(config: controller_pb2.ExperimentConfig) -> controller_pb2.ExperimentConfig:
    """A copy with every zero field set to the embedded default (the file's own zeros are defaults)."""
    base = embedded()
    merged = controller_pb2.ExperimentConfig()
    merged.CopyFrom(base)
    merged.MergeFrom(config)  # scalars: non-zero values of `config` win; repeated fields are appended
    if config.datasets:
        del merged.datasets[:]
        merged.datasets.extend(config.datasets)
    if config.generation.factors:
        del merged.generation.factors[:]
        merged.generation.factors.extend(config.generation.factors)
    if config.lora.target_modules:
        del merged.lora.target_modules[:]
        merged.lora.target_modules.extend(config.lora.target_modules)
    if not config.HasField("novelty_precheck") and (
        merged.ablations.no_novelty_filter
        or merged.structural_novelty_threshold
        or merged.generation.mode == common_pb2.GENERATION_MODE_CORPUS_SAMPLE
    ):
        # the embedded default cannot serve these (validate says why when a config asks for both)
        merged.novelty_precheck = False
    return merged


def validate(config: controller_pb2.ExperimentConfig) -> None:
    """Raise InvalidArgument naming the first field out of range (run after with_defaults)."""
    _validate_run(config)
    _validate_generation(config.generation)
    _validate_novelty(config)
    _validate_training(config)


def bad(field: str, problem: str) -> None:
    """InvalidArgument naming `field`."""
    raise InvalidArgument(field, problem)


def _validate_run(config: controller_pb2.ExperimentConfig) -> None:
    """The dataset, the run's size and budget, the thresholds and the selection policy."""
    if len(config.datasets) != 1:
        bad(
            "datasets",
            f"one dataset per experiment (got {list(config.datasets)}); run one experiment per dataset",
        )
    if config.datasets[0] not in datasets.NAMES:
        bad("datasets", f"{config.datasets[0]!r} is not one of {list(datasets.NAMES)}")
    if not 1 <= config.cycles <= 1000:
        bad("cycles", f"{config.cycles} is not in 1..1000")
    if config.wall_clock_budget_seconds < 0 or not math.isfinite(config.wall_clock_budget_seconds):
        bad("wall_clock_budget_seconds", f"{config.wall_clock_budget_seconds} must be ≥ 0 (0 = none)")
    if not 1 <= config.candidates_per_cycle <= 10_000:
        bad("candidates_per_cycle", f"{config.candidates_per_cycle} is not in 1..10000")
    for name in ("accuracy_threshold", "novelty_threshold"):
        value = getattr(config, name)
        if not 0 < value <= 1:
            bad(name, f"{value} is not in (0, 1]")
    if config.selection_policy != controller_pb2.SELECTION_POLICY_THRESHOLD and config.selection_top_k < 1:
        bad("selection_top_k", "top-k selection policies need selection_top_k ≥ 1")


def _validate_generation(g: controller_pb2.GenerationSettings) -> None:
    if g.mode == common_pb2.GENERATION_MODE_UNSPECIFIED:
        bad("generation.mode", "is required (full, delta, factor, region, engine or corpus_sample)")
    d = g.decoding
    if d.temperature < 0 or d.top_k < 0 or not 0 <= d.top_p <= 1 or d.max_new_tokens < 0:
        bad("generation.decoding", "temperature, top_k and max_new_tokens must be ≥ 0 and top_p in [0, 1]")
    if g.temperature_schedule == controller_pb2.TEMPERATURE_SCHEDULE_CYCLIC:
        if g.temperature_max <= 0:
            bad("generation.temperature_max", "a cyclic schedule needs temperature_max > 0")
        if g.temperature_period_cycles < 2:
            bad(
                "generation.temperature_period_cycles",
                "a cyclic schedule needs a period of at least 2 cycles",
            )
    if g.tournament_size < 1:
        bad("generation.tournament_size", f"{g.tournament_size} must be at least 1")
    if g.population_size < 1:
        bad("generation.population_size", f"{g.population_size} must be at least 1")
    factor_modes = (common_pb2.GENERATION_MODE_FACTOR, common_pb2.GENERATION_MODE_REGION)
    if g.factor_policy == controller_pb2.FACTOR_POLICY_BANDIT and g.mode not in factor_modes:
        bad(
            "generation.factor_policy",
            f"a bandit picks the factor of factor or region candidates, not {_mode_name(g.mode)}",
        )
    if g.repair and not uses_language_model(g):
        bad("generation.repair", f"repairs what a model wrote; mode {_mode_name(g.mode)} has no model")
    if g.prompt_dataset and g.prompt_dataset not in datasets.NAMES:
        bad("generation.prompt_dataset", f"{g.prompt_dataset!r} is not one of {list(datasets.NAMES)}")


def uses_language_model(g: controller_pb2.GenerationSettings) -> bool:
    """Whether candidates are sampled by the language model (full, delta, factor, region), so each cycle
    fine-tunes it; engine and corpus_sample have no model (issue 35)."""
    return g.mode not in (common_pb2.GENERATION_MODE_ENGINE, common_pb2.GENERATION_MODE_CORPUS_SAMPLE)


def _mode_name(mode: int) -> str:
    return common_pb2.GenerationMode.Name(mode).removeprefix("GENERATION_MODE_").lower()


def _validate_novelty(config: controller_pb2.ExperimentConfig) -> None:
    if not 0 <= config.structural_novelty_threshold <= 1:
        bad(
            "structural_novelty_threshold",
            f"{config.structural_novelty_threshold} is not in [0, 1] (0 = off)",
        )
    if config.novelty_precheck and config.ablations.no_novelty_filter:
        bad("novelty_precheck", "checks novelty before training, so it cannot go with no_novelty_filter")
    off = controller_pb2.ARCHITECTURE_NOVELTY_OFF
    if config.structural_novelty_threshold and config.architecture_novelty == off:
        bad("structural_novelty_threshold", "needs the architecture recorded (architecture_novelty is off)")
    if config.novelty_precheck and config.generation.mode == common_pb2.GENERATION_MODE_CORPUS_SAMPLE:
        bad(
            "novelty_precheck",
            "would decide every corpus_sample candidate before training (each is a corpus program's text); "
            "corpus_sample trains them all",
        )
    if config.novelty_precheck and config.structural_novelty_threshold:
        bad(
            "novelty_precheck",
            "checks text before training; a structural threshold needs the forward pass (set one of them)",
        )


def _validate_training(config: controller_pb2.ExperimentConfig) -> None:
    """The evaluation protocol, promotion, final training and the fine-tune."""
    p = config.protocol
    if p.epochs < 1 or p.batch_size < 1 or p.learning_rate <= 0 or p.param_budget < 1:
        bad("protocol", "epochs, batch_size, learning_rate and param_budget must be positive")
    if p.time_limit_seconds <= 0 or not math.isfinite(p.time_limit_seconds):
        bad("protocol.time_limit_seconds", "must be positive")
    promotion = config.promotion
    if promotion.top_k < 0:
        bad("promotion.top_k", f"{promotion.top_k} must not be negative (0 = no promotion)")
    if promotion.top_k and promotion.epochs < 2:
        bad("promotion.epochs", f"{promotion.epochs}: promotion trains longer than the 1-epoch proxy (≥ 2)")
    if not -1 <= promotion.min_spearman <= 1:
        bad("promotion.min_spearman", f"{promotion.min_spearman} is not in [-1, 1]")
    if promotion.select_on_promoted and not promotion.top_k:
        bad("promotion.select_on_promoted", "needs promotion.top_k ≥ 1")
    if config.final_training.top_k < 0 or config.final_training.epochs < 0:
        bad("final_training", "top_k and epochs must not be negative")
    if config.final_training.top_k and config.final_training.epochs < 2:
        bad("final_training.epochs", "fully training the top-k needs more epochs than the 1-epoch proxy")
    if not 0 <= config.edit_pair_share <= 10:
        bad("edit_pair_share", f"{config.edit_pair_share} is not in [0, 10] (a share of the LEMUR pairs)")
    if config.lemur_examples_per_cycle < -1:
        bad("lemur_examples_per_cycle", "must be positive, or -1 for the whole corpus")
    if config.lora.rank < 0 or config.lora.alpha < 0 or not 0 <= config.lora.dropout < 1:
        bad("lora", "rank and alpha must be ≥ 0 and dropout in [0, 1)")
    s = config.fine_tune_schedule
    if s.epochs < 0 or s.learning_rate < 0 or s.batch_size < 0 or s.max_seq_len_tokens < 0:
        bad(
            "fine_tune_schedule",
            "epochs, learning_rate, batch_size and max_seq_len_tokens must not be negative",
        )


def apply_overrides(config: controller_pb2.ExperimentConfig, **overrides: Any) -> None:
    """CLI flags: cycles, candidates, dataset, mode, seed, name (None = not given)."""
    for flag, key in (("--cycles", "cycles"), ("--candidates", "candidates")):
        if overrides.get(key) is not None and overrides[key] < 1:
            raise InvalidArgument(flag, f"{overrides[key]} must be at least 1")
    if overrides.get("cycles") is not None:
        config.cycles = overrides["cycles"]
    if overrides.get("candidates") is not None:
        config.candidates_per_cycle = overrides["candidates"]
    if overrides.get("dataset"):
        del config.datasets[:]
        config.datasets.append(overrides["dataset"])
    if overrides.get("mode"):
        config.generation.mode = common_pb2.GenerationMode.Value(
            "GENERATION_MODE_" + overrides["mode"].upper()
        )
    if overrides.get("seed") is not None:
        config.seed = overrides["seed"]
    if overrides.get("name"):
        config.name = overrides["name"]


def to_json(config: controller_pb2.ExperimentConfig) -> str:
    return json_format.MessageToJson(config, preserving_proto_field_name=True, sort_keys=True, indent=None)


def config_sha256(config: controller_pb2.ExperimentConfig) -> str:
    return hashlib.sha256(to_json(config).encode()).hexdigest()


def from_json(text: str) -> controller_pb2.ExperimentConfig:
    return json_format.Parse(text, controller_pb2.ExperimentConfig())
