"""Fine-tune specs: the paper's defaults, a JSON round trip, and a named field for every bad value."""

from __future__ import annotations

import dataclasses

import pytest

from archloop.errors import InvalidArgument
from services.trainer.spec import FineTuneSpec, LoraConfig, Schedule


def spec(**changes: object) -> FineTuneSpec:
    return dataclasses.replace(FineTuneSpec("job", "adapter-1", "/c/examples.jsonl"), **changes)


def test_defaults_are_the_papers() -> None:
    s = spec()
    assert (s.lora.rank, s.lora.alpha, s.lora.dropout) == (32, 32.0, 0.05)
    assert (s.schedule.epochs, s.schedule.learning_rate, s.schedule.batch_size) == (5, 1e-5, 1)
    assert (s.schedule.gradient_accumulation_steps, s.schedule.warmup_steps) == (4, 20)
    schedule = s.schedule
    assert (schedule.weight_decay, schedule.max_grad_norm, schedule.lr_scheduler) == (0.01, 1.0, "cosine")
    s.validate()


def test_json_round_trip() -> None:
    s = spec(lora=LoraConfig(8, 16.0, 0.0, ("q_proj", "v_proj")), experiment_id="exp", cycle=3)
    assert FineTuneSpec.from_json(s.to_json()) == s
    assert str(s.output_subdir()) == "exp/cycle-3"
    assert str(spec().output_subdir()) == "adapters/adapter-1"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"job_id": ""}, "job_id"),
        ({"adapter_name": "../escape"}, "adapter_name"),
        ({"experiment_id": "a b"}, "experiment_id"),
        ({"cycle": -1}, "cycle"),
        ({"corpus_path": ""}, "corpus.path"),
        ({"lora": LoraConfig(rank=0)}, "lora.rank"),
        ({"lora": LoraConfig(dropout=1.0)}, "lora.dropout"),
        ({"schedule": Schedule(learning_rate=-1e-5)}, "schedule.learning_rate"),
        ({"schedule": Schedule(epochs=0)}, "schedule.epochs"),
        ({"schedule": Schedule(lr_scheduler="step")}, "schedule.lr_scheduler"),
        ({"init": "continue"}, "init_adapter"),
    ],
)
def test_bad_values_name_their_field(changes: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        spec(**changes).validate()
    assert err.value.field == field
