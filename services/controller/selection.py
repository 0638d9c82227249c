"""Which of a cycle's candidates join the corpus: a pure function of the candidates and the experiment's
policy, thresholds and ablations (docs/method.md#the-loop, #novelty-filter).

    invalid    the evaluator did not pass it
    rejected   a near-duplicate of the corpus (J_train) or of an earlier candidate of the cycle (J_gen),
               by text; with architecture_novelty require, a program whose wiring a corpus program,
               an admitted candidate or an earlier valid candidate of the cycle has; by structure when
               the structural threshold is on (J_struct ≥ it); unless the novelty filter is ablated;
               or not selected by the policy
    admitted   valid, novel and selected:
                 threshold              first-epoch accuracy ≥ τ (every candidate, when the threshold is
                                        ablated)
                 threshold_top_k_fill   those, then the best of the rest up to k in all
                 top_k                  the k most accurate (ties: lower index first)

    rejected   (novelty pre-check, config novelty_precheck) a text near-duplicate, or with
               architecture_novelty require a known wiring by its forward-only run, decided before
               training: never trained, neither valid nor invalid

`rejection_count` is the paper's: how many near-duplicates that were good enough (≥ τ) the cycle had
rejected up to and including this candidate; one decided before training counts too (its accuracy is
unknown), so with the pre-check on the count is an upper bound of the paper's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Policy(enum.Enum):
    THRESHOLD = "threshold"
    THRESHOLD_TOP_K_FILL = "threshold_top_k_fill"
    TOP_K = "top_k"


class Verdict(enum.StrEnum):
    ADMITTED = "admitted"
    REJECTED = "rejected"
    INVALID = "invalid"


@dataclass(frozen=True)
class Thresholds:
    accuracy: float  # τ
    top_k: int
    structural: float = 0.0  # J_struct at which a candidate is a structural near-duplicate (0 = off)
    new_wiring: bool = False  # architecture_novelty require: a known wiring is rejected


@dataclass(frozen=True)
class Ablations:
    no_accuracy_threshold: bool = False
    no_novelty_filter: bool = False


@dataclass(frozen=True)
class Candidate:
    """What selection reads of a candidate (its ledger row after evaluation and novelty)."""

    candidate_id: str
    index: int
    valid: bool
    eval_status: str = ""
    accuracy: float = 0.0
    near_duplicate_train: bool = False
    near_duplicate_generation: bool = False
    nearest_train: str = ""
    nearest_generation: str = ""
    jaccard_train: float = 0.0
    jaccard_generation: float = 0.0
    structural_train: float = 0.0
    structural_generation: float = 0.0
    nearest_structural_train: str = ""
    nearest_structural_generation: str = ""
    wiring_known_as: str = ""  # the corpus program or earlier candidate with its wiring ("" = wiring-new)
    decided_before_training: bool = False  # decided by the novelty pre-check, never trained


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    rejection_count: int


STRUCTURAL = "structural near-duplicate"  # how a structural rejection's reason begins (reports count them)
KNOWN_WIRING = "known wiring"  # how a rejection for an architecture already known begins
BEFORE_TRAINING = "decided before training"  # how a pre-check rejection's reason ends


def _near_duplicate(c: Candidate, structural: float, new_wiring: bool = False) -> str | None:
    """Why `c` is a near-duplicate (text first, then the known wiring, then structure), or None."""
    if c.near_duplicate_train:
        return f"near-duplicate of {c.nearest_train} (J={c.jaccard_train:.3f})"
    if c.near_duplicate_generation:
        return f"near-duplicate of {c.nearest_generation} (J={c.jaccard_generation:.3f})"
    if new_wiring and c.wiring_known_as:
        return f"{KNOWN_WIRING}: the architecture of {c.wiring_known_as}"
    if structural and c.structural_train >= structural:
        return f"{STRUCTURAL} of {c.nearest_structural_train} (J_struct={c.structural_train:.3f})"
    if structural and c.structural_generation >= structural:
        return f"{STRUCTURAL} of {c.nearest_structural_generation} (J_struct={c.structural_generation:.3f})"
    return None


def decide(
    candidates: Iterable[Candidate], policy: Policy, thresholds: Thresholds, ablations: Ablations
) -> dict[str, Decision]:
    """{candidate_id: Decision} for the whole cycle, in index order."""
    tau, k = thresholds.accuracy, thresholds.top_k
    decisions: dict[str, Decision] = {}
    rejections = 0
    eligible: list[tuple[Candidate, bool, int]] = []  # (candidate, reaches τ, rejection count)
    for c in sorted(candidates, key=lambda c: c.index):
        if c.decided_before_training:  # its accuracy is unknown: counted as a rejection all the same
            rejections += 1
            why = _near_duplicate(c, 0.0, thresholds.new_wiring) or "near-duplicate"
            decisions[c.candidate_id] = Decision(Verdict.REJECTED, f"{why}, {BEFORE_TRAINING}", rejections)
            continue
        if not c.valid:
            decisions[c.candidate_id] = Decision(Verdict.INVALID, f"not valid: {c.eval_status}", rejections)
            continue
        good = ablations.no_accuracy_threshold or c.accuracy >= tau
        duplicate = (
            None
            if ablations.no_novelty_filter
            else _near_duplicate(c, thresholds.structural, thresholds.new_wiring)
        )
        if duplicate:
            rejections += good
            decisions[c.candidate_id] = Decision(Verdict.REJECTED, duplicate, rejections)
            continue
        eligible.append((c, good, rejections))
    ranked = sorted(eligible, key=lambda item: (-item[0].accuracy, item[0].index))
    if policy is Policy.TOP_K:
        chosen = {c.candidate_id for c, _, _ in ranked[:k]}
    else:
        chosen = {c.candidate_id for c, good, _ in eligible if good}
        if policy is Policy.THRESHOLD_TOP_K_FILL:
            fill = [c for c, good, _ in ranked if not good][: max(0, k - len(chosen))]
            chosen |= {c.candidate_id for c in fill}
    for c, good, count in eligible:
        if c.candidate_id in chosen:
            if ablations.no_accuracy_threshold and policy is Policy.THRESHOLD:
                why = "novel (no accuracy threshold)"
            elif good and not ablations.no_accuracy_threshold:
                why = "accuracy ≥ τ and novel"
            else:
                why = f"novel, top {k} by accuracy"
            decisions[c.candidate_id] = Decision(Verdict.ADMITTED, why, count)
        elif policy is Policy.TOP_K:
            decisions[c.candidate_id] = Decision(Verdict.REJECTED, f"not in the top {k} by accuracy", count)
        else:
            decisions[c.candidate_id] = Decision(
                Verdict.REJECTED, f"accuracy {c.accuracy:.4f} < τ {tau}", count
            )
    return decisions


def promotable(
    candidates: Iterable[Candidate], k: int, thresholds: Thresholds, ablations: Ablations
) -> list[str]:
    """The ids of the cycle's candidates promotion trains longer: its top `k` valid, novel ones by
    first-epoch accuracy (ties: lower index first), best first — those selection can admit."""
    novel = [
        c
        for c in candidates
        if c.valid
        and not c.decided_before_training
        and (
            ablations.no_novelty_filter
            or not _near_duplicate(c, thresholds.structural, thresholds.new_wiring)
        )
    ]
    ranked = sorted(novel, key=lambda c: (-c.accuracy, c.index))
    return [c.candidate_id for c in ranked[:k]]
