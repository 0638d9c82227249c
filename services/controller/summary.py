"""One source of a cycle's counts, read from its candidates' ledger rows: the loop's events
(cycle_generated, cycle_evaluated, cycle_filtered, cycle_completed) and the report's per-cycle rows
(services.controller.report.cycle_rows) both take them from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.controller.ledger import CandidateRow


@dataclass(frozen=True)
class CycleCounts:
    generated: int  # every candidate the cycle holds
    generation_errors: int
    decided_before_training: int  # the novelty pre-check's rejections: never trained
    trained_for_a_later_decision: int
    accuracies: list[float]  # of the valid candidates
    evaluator_seconds: float
    admitted: int
    near_duplicates_train: int
    near_duplicates_generation: int

    @property
    def evaluated(self) -> int:
        """What the evaluator decided: the denominator of every rate."""
        return self.generated - self.decided_before_training

    @property
    def valid(self) -> int:
        return len(self.accuracies)

    def above(self, threshold: float) -> int:
        return sum(a >= threshold for a in self.accuracies)


def cycle_counts(candidates: Sequence[CandidateRow]) -> CycleCounts:
    return CycleCounts(
        generated=len(candidates),
        generation_errors=sum(bool(c.generation_error) for c in candidates),
        decided_before_training=sum(c.decided_before_training for c in candidates),
        trained_for_a_later_decision=sum(c.trained_for_a_later_decision for c in candidates),
        accuracies=[c.accuracy for c in candidates if c.valid and c.accuracy is not None],
        evaluator_seconds=sum(c.eval_seconds or 0.0 for c in candidates),
        admitted=sum(c.admitted for c in candidates),
        near_duplicates_train=sum(bool(c.near_dup_text_train) for c in candidates),
        near_duplicates_generation=sum(bool(c.near_dup_text_gen) for c in candidates),
    )


def evaluated_payload(candidates: Sequence[CandidateRow]) -> dict:
    """The cycle_evaluated event's counts."""
    n = cycle_counts(candidates)
    return dict(
        candidates_evaluated=n.evaluated,
        decided_before_training=n.decided_before_training,
        evaluator_seconds=n.evaluator_seconds,
        candidates_valid=n.valid,
        best_accuracy=max(n.accuracies, default=0.0),
        mean_accuracy=sum(n.accuracies) / n.valid if n.valid else 0.0,
    )


def filtered_payload(candidates: Sequence[CandidateRow], threshold: float, corpus_size_start: int) -> dict:
    """The cycle_filtered event's counts."""
    n = cycle_counts(candidates)
    return dict(
        candidates_above_threshold=n.above(threshold),
        near_duplicates_train=n.near_duplicates_train,
        near_duplicates_generation=n.near_duplicates_generation,
        candidates_admitted=n.admitted,
        corpus_size=corpus_size_start + n.admitted,
        decided_before_training=n.decided_before_training,
        trained_for_a_later_decision=n.trained_for_a_later_decision,
    )
