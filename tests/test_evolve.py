"""The engine-only child (archloop.evolve): a verified edit of exactly one factor, chosen by a seed."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from archloop import evolve, mutate
from archloop.factors import load_factors, touched_factors
from archloop.prompts import BASELINE_FILE

BASELINE = BASELINE_FILE.read_text()


def test_a_child_touches_exactly_its_factor_and_its_seed_decides_it() -> None:
    table = load_factors()
    children = [evolve.child(BASELINE, f"1:1:{i}") for i in range(24)]
    assert all(c is not None for c in children)
    for c in children:
        assert c is not None and c.code != BASELINE and touched_factors(BASELINE, c.code, table) == [c.factor]
    assert children == [evolve.child(BASELINE, f"1:1:{i}") for i in range(24)]  # seeded
    assert len(Counter(c.factor for c in children if c)) >= 4  # factors drawn, not one favourite


def test_a_factor_the_parent_lacks_falls_through_and_none_when_nothing_applies() -> None:
    # the baseline has no gate for the attention operator to remove
    assert mutate.mutations(BASELINE, "attention", random.Random(0)) == []
    assert evolve.child(BASELINE, "s", ("attention",)) is None
    made = evolve.child(BASELINE, "s", ("attention", "activation"))
    assert made is not None and made.factor == "activation" and made.tried == ("attention",)
    with pytest.raises(KeyError, match="no operator"):
        evolve.child(BASELINE, "s", ("colour",))
    with pytest.raises(SyntaxError):
        evolve.child("def broken(:\n", "s")


@pytest.mark.parametrize("name", ["embedded", "embedded-long", "engine", "corpus-sample", "paper"])
def test_every_packaged_config_validates_and_the_search_modes_say_they_have_no_model(name: str) -> None:
    from services.controller import config as experiment_config

    config = experiment_config.with_defaults(
        experiment_config.load_file(experiment_config.CONFIG_DIR / f"{name}.yaml")
    )
    experiment_config.validate(config)
    without = name in ("engine", "corpus-sample")
    assert experiment_config.uses_language_model(config.generation) is not without
    if name == "corpus-sample":
        assert not config.novelty_precheck  # every corpus program is trained
