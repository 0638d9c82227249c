"""Decisions against exact Jaccard on a labelled set built from real LEMUR model files.

Pairs: each of 80 model files (1.5-8 KB) against 12 edited variants of itself (1-20 edits), plus
400 pairs of different models. A pair is labelled by the exact Jaccard of its shingle sets only.
Goals (issue 4): recall of pairs with exact J > 0.90 ≥ 0.98; pairs with exact J < 0.80 flagged ≤ 1 %.
"""

from __future__ import annotations

import random

import pytest

from archloop.lemur import iter_model_sources, lemur_wheel
from services.novelty.collection import CollectionConfig
from services.novelty.fingerprint import exact_jaccard, fingerprint_source
from services.novelty.index import NoveltyIndex, Submission
from services.novelty.store import EntryStore
from services.novelty.tests.variants import make_variant

EDIT_COUNTS = (1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 14, 20)


@pytest.fixture(scope="module")
def labelled_pairs() -> list[tuple[float, str, str]]:
    rng = random.Random(7)
    sources = [s for _, s in iter_model_sources(lemur_wheel()) if 1500 <= len(s) <= 8000]
    bases = rng.sample(sources, 80)
    pairs = []
    for base in bases:
        for edits in EDIT_COUNTS:
            pairs.append((base, make_variant(base, rng, edits)[0]))
    for _ in range(400):
        pairs.append(tuple(rng.sample(bases, 2)))
    labelled = []
    for a, b in pairs:
        exact = exact_jaccard(
            fingerprint_source(a, 10, 256, 1).shingles, fingerprint_source(b, 10, 256, 1).shingles
        )
        labelled.append((exact, a, b))
    return labelled


def _rates(pairs: list[tuple[float, str, str]], verification: str) -> tuple[float, float, int, int]:
    index = NoveltyIndex(EntryStore(":memory:"))
    index.create_collection("pairs", CollectionConfig(verification=verification))
    true_pos = positives = false_pos = negatives = 0
    for i, (exact, a, b) in enumerate(pairs):
        for entry_id in list(index.collection("pairs").code_sha256):
            index.remove("pairs", entry_id)
        index.admit("pairs", Submission(code=a, entry_id=str(i)))
        flagged = index.check(Submission(code=b), ["pairs"]).matches[0].near_duplicate
        if exact > 0.90:
            positives += 1
            true_pos += flagged
        elif exact < 0.80:
            negatives += 1
            false_pos += flagged
    return true_pos / positives, false_pos / negatives, positives, negatives


def test_labelled_set_spans_the_threshold(labelled_pairs) -> None:
    exact = [j for j, _, _ in labelled_pairs]
    assert sum(0.90 < j <= 0.93 for j in exact) >= 40  # the hard band is well represented
    assert sum(j > 0.90 for j in exact) >= 250
    assert sum(j < 0.80 for j in exact) >= 400


def test_default_verification_meets_the_goals(labelled_pairs) -> None:
    recall, false_positive_rate, positives, negatives = _rates(labelled_pairs, "exact")
    print(f"exact near τ: recall {recall:.4f} of {positives}, FP {false_positive_rate:.4f} of {negatives}")
    assert recall >= 0.98
    assert false_positive_rate <= 0.01


def test_estimate_only_rule_keeps_false_positives_low(labelled_pairs) -> None:
    """The paper's rule: no false positives either, but its recall suffers from estimator noise."""
    recall, false_positive_rate, positives, _ = _rates(labelled_pairs, "estimated")
    print(f"estimated: recall {recall:.4f} of {positives}, FP {false_positive_rate:.4f}")
    assert false_positive_rate <= 0.01
    assert 0.80 <= recall < 1.0
