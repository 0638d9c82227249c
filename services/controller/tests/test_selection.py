"""The selection policy and the ablation matrix as a table: no server, no ledger, no LEMUR."""

from __future__ import annotations

import pytest

from services.controller.selection import Ablations, Candidate, Policy, Thresholds, Verdict, decide

A, R, X = Verdict.ADMITTED, Verdict.REJECTED, Verdict.INVALID  # X: not valid


def _cycle() -> list[Candidate]:
    """One cycle, in index order: what each candidate is decides every row of the table below."""
    return [
        # 0: a near-duplicate of the corpus, good enough (≥ τ): counts as a rejection
        Candidate(
            "c0", 0, True, "OK", 0.55, near_duplicate_train=True, nearest_train="lemur-a", jaccard_train=0.95
        ),
        Candidate("c1", 1, True, "OK", 0.30),  # novel, below τ
        Candidate("c2", 2, True, "OK", 0.62),  # novel, above τ
        # 3: a near-duplicate of candidate 2 (J_gen), good enough
        Candidate(
            "c3",
            3,
            True,
            "OK",
            0.70,
            near_duplicate_generation=True,
            nearest_generation="c2",
            jaccard_generation=0.93,
        ),
        Candidate("c4", 4, False, "FORWARD_ERROR"),  # not valid
        Candidate("c5", 5, True, "OK", 0.45),  # novel, above τ
        # 6: a near-duplicate of the corpus below τ: rejected, but not counted
        Candidate(
            "c6", 6, True, "OK", 0.20, near_duplicate_train=True, nearest_train="lemur-b", jaccard_train=0.91
        ),
        Candidate("c7", 7, True, "OK", 0.35),  # novel, below τ, second best of those
    ]


TAU, K = 0.40, 3
NONE, NO_NOVELTY, NO_THRESHOLD = (
    Ablations(),
    Ablations(no_novelty_filter=True),
    Ablations(no_accuracy_threshold=True),
)
BOTH = Ablations(no_novelty_filter=True, no_accuracy_threshold=True)

TABLE = [
    # policy, ablations, k,  verdicts of c0 … c7
    (Policy.THRESHOLD, NONE, K, [R, R, A, R, X, A, R, R]),
    (Policy.THRESHOLD, NO_NOVELTY, K, [A, R, A, A, X, A, R, R]),
    (Policy.THRESHOLD, NO_THRESHOLD, K, [R, A, A, R, X, A, R, A]),
    (Policy.THRESHOLD, BOTH, K, [A, A, A, A, X, A, A, A]),
    # the two above τ, then the best of the rest (c7 0.35 > c1 0.30) up to k = 3
    (Policy.THRESHOLD_TOP_K_FILL, NONE, K, [R, R, A, R, X, A, R, A]),
    (Policy.THRESHOLD_TOP_K_FILL, NONE, 1, [R, R, A, R, X, A, R, R]),  # never fewer than those ≥ τ
    (Policy.THRESHOLD_TOP_K_FILL, NO_NOVELTY, K, [A, R, A, A, X, A, R, R]),
    (Policy.TOP_K, NONE, K, [R, R, A, R, X, A, R, A]),
    (Policy.TOP_K, NONE, 1, [R, R, A, R, X, R, R, R]),
    (Policy.TOP_K, NO_NOVELTY, 2, [R, R, A, A, X, R, R, R]),  # c3 0.70, c2 0.62
    (Policy.TOP_K, NO_THRESHOLD, K, [R, R, A, R, X, A, R, A]),
]


@pytest.mark.parametrize(("policy", "ablations", "k", "verdicts"), TABLE)
def test_the_selection_table(policy: Policy, ablations: Ablations, k: int, verdicts: list[Verdict]) -> None:
    decisions = decide(_cycle(), policy, Thresholds(TAU, k), ablations)
    assert [decisions[f"c{i}"].verdict for i in range(8)] == verdicts


def test_rejection_count_counts_good_near_duplicates_up_to_each_candidate() -> None:
    decisions = decide(_cycle(), Policy.THRESHOLD, Thresholds(TAU, K), NONE)
    assert [decisions[f"c{i}"].rejection_count for i in range(8)] == [1, 1, 1, 2, 2, 2, 2, 2]
    # with the filter ablated nothing is rejected as a near-duplicate, so nothing is counted
    ablated = decide(_cycle(), Policy.THRESHOLD, Thresholds(TAU, K), NO_NOVELTY)
    assert {d.rejection_count for d in ablated.values()} == {0}


def test_the_reasons_say_why() -> None:
    decisions = decide(_cycle(), Policy.THRESHOLD, Thresholds(TAU, K), NONE)
    assert decisions["c0"].reason == "near-duplicate of lemur-a (J=0.950)"
    assert decisions["c3"].reason == "near-duplicate of c2 (J=0.930)"
    assert decisions["c1"].reason == "accuracy 0.3000 < τ 0.4"
    assert decisions["c2"].reason == "accuracy ≥ τ and novel"
    assert decisions["c4"].reason == "not valid: FORWARD_ERROR"
    top = decide(_cycle(), Policy.TOP_K, Thresholds(TAU, 1), NONE)
    assert top["c5"].reason == "not in the top 1 by accuracy"
    filled = decide(_cycle(), Policy.THRESHOLD_TOP_K_FILL, Thresholds(TAU, K), NONE)
    assert filled["c7"].reason == "novel, top 3 by accuracy"
    assert decide(_cycle(), Policy.THRESHOLD, Thresholds(TAU, K), NO_THRESHOLD)["c1"].reason == (
        "novel (no accuracy threshold)"
    )


def test_ties_go_to_the_earlier_candidate_and_input_order_does_not_matter() -> None:
    tied = [Candidate("late", 5, True, "OK", 0.5), Candidate("early", 2, True, "OK", 0.5)]
    decisions = decide(tied, Policy.TOP_K, Thresholds(TAU, 1), NONE)
    assert decisions["early"].verdict is A and decisions["late"].verdict is R


def test_an_empty_cycle_decides_nothing() -> None:
    assert decide([], Policy.THRESHOLD_TOP_K_FILL, Thresholds(TAU, K), NONE) == {}


def test_the_structural_threshold_rejects_structural_near_duplicates_only_when_on() -> None:
    same_layers = Candidate(
        "s0", 0, True, "OK", 0.8, structural_train=0.95, nearest_structural_train="lemur-s", jaccard_train=0.4
    )
    same_as_earlier = Candidate(
        "s1", 1, True, "OK", 0.7, structural_generation=0.92, nearest_structural_generation="s0"
    )
    both = Candidate(  # a text near-duplicate too: text is named first
        "s2", 2, True, "OK", 0.9, near_duplicate_train=True, nearest_train="lemur-t", jaccard_train=0.97,
        structural_train=1.0, nearest_structural_train="lemur-s",
    )  # fmt: skip
    cycle = [same_layers, same_as_earlier, both]
    off = decide(cycle, Policy.THRESHOLD, Thresholds(0.4, 4), Ablations())
    assert [off[c.candidate_id].verdict for c in cycle] == [A, A, R]
    on = decide(cycle, Policy.THRESHOLD, Thresholds(0.4, 4, structural=0.9), Ablations())
    assert [on[c.candidate_id].verdict for c in cycle] == [R, R, R]
    assert on["s0"].reason == "structural near-duplicate of lemur-s (J_struct=0.950)"
    assert on["s1"].reason == "structural near-duplicate of s0 (J_struct=0.920)"
    assert on["s2"].reason == "near-duplicate of lemur-t (J=0.970)"
    assert [on[c.candidate_id].rejection_count for c in cycle] == [1, 2, 3]  # all good enough
    stricter = decide(cycle, Policy.THRESHOLD, Thresholds(0.4, 4, structural=0.93), Ablations())
    assert stricter["s1"].verdict is A  # 0.92 < 0.93
    ablated = decide(
        cycle, Policy.THRESHOLD, Thresholds(0.4, 4, structural=0.9), Ablations(no_novelty_filter=True)
    )
    assert all(d.verdict is A for d in ablated.values())
