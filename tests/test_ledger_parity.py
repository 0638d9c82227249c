"""bench/ledger_parity.py compares two runs' ledgers by ids relative to each run's name."""

from __future__ import annotations

from bench.ledger_parity import differences, relative_ids


def test_only_ids_are_made_relative_never_a_word_that_is_the_name() -> None:
    reason = "near-duplicate of before-c1-0002 (J=0.875), decided before training"
    expected = "near-duplicate of EXP-c1-0002 (J=0.875), decided before training"
    assert relative_ids(reason, "before") == expected
    assert relative_ids("x-before-c1-0002", "before") == "x-before-c1-0002"
    assert relative_ids("nearest ga-mut-71, adapter ga-c2", "ga") == "nearest ga-mut-71, adapter EXP-c2"


def test_a_figure_that_differs_is_named_with_both_values() -> None:
    run = {"candidates": {"c1-0000": {"accuracy": 0.5}}, "cycles": {}, "events": ["started"]}
    other = {"candidates": {"c1-0000": {"accuracy": 0.25}}, "cycles": {}, "events": ["started"]}
    assert differences(run, run) == []
    assert differences(run, other) == ["candidates c1-0000: accuracy 0.5 → 0.25"]
