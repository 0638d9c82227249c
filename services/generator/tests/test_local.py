"""The local backend's adapters: merged into a copy of the small model, or switched by peft — the same
samples either way (greedy, so the comparison is token for token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archloop import datasets, prompts
from services.generator.backend import Decoding
from services.generator.local import LocalBackend
from tools.testing import random_lora_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return random_lora_adapter(folder / "one", seed=0), random_lora_adapter(folder / "two", seed=1)


def _sample(backend: LocalBackend, adapter: str) -> list[str]:
    entry = datasets.CATALOGUE["digits"]
    task = prompts.task_for("cifar10", entry.input_shape, entry.num_classes, 500_000)
    greedy = Decoding(temperature=0.0, max_new_tokens=40)
    return [c.text for c in backend.generate([prompts.chat_messages(task)] * 2, greedy, [1], adapter)]


def test_a_merged_adapter_samples_what_peft_samples_and_a_new_version_replaces_the_old(adapters) -> None:
    one, two = adapters
    merged, switched = LocalBackend("", "cpu", threads=2), LocalBackend("", "cpu", threads=2)
    switched.merges_adapters = False  # as a model over MERGE_BELOW_PARAMETERS would
    assert merged.merges_adapters  # the tiny model is far below it
    base = _sample(merged, "")
    for backend in (merged, switched):
        backend.load_adapter("cycle", str(one))
    with_one = _sample(merged, "cycle")
    assert with_one == _sample(switched, "cycle") and with_one != base
    assert _sample(merged, "") == base == _sample(switched, "")  # the base weights are untouched
    for backend in (merged, switched):
        info, changed = backend.load_adapter("cycle", str(two))  # the same name, new weights
        assert changed and backend.adapters["cycle"] == info
    assert len(merged._merged) == 1  # the old version's copy is gone
    with_two = _sample(merged, "cycle")
    assert with_two == _sample(switched, "cycle") and with_two != with_one
