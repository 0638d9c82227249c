"""One home for the ids and names the services share: a candidate's id (made by the generator), the
controller's fine-tune job ids, novelty collection names and evaluation ids by kind.

An id is made here and never parsed back: whoever needs a candidate's experiment or cycle reads the
fields the candidate carries (common.Candidate, controller.CandidateRecord), not the id's text.
"""

from __future__ import annotations

import enum


def candidate_id(experiment_id: str, cycle: int, index: int) -> str:
    """`<experiment>-c<cycle>-<index, 4 digits>`; an ad-hoc request (no experiment) is `adhoc-…`."""
    return f"{experiment_id or 'adhoc'}-c{cycle}-{index:04d}"


def fine_tune_job_id(experiment_id: str, cycle: int) -> str:
    """The cycle's fine-tune job, and its adapter's name (the trainer is idempotent by job id)."""
    return f"{experiment_id}-c{cycle}"


def corpus_collection(experiment_id: str) -> str:
    """The novelty collection of the experiment's corpus: LEMUR and every admitted candidate."""
    return f"{experiment_id}-corpus"


def cycle_collection(experiment_id: str, cycle: int) -> str:
    """The novelty collection of one cycle's valid candidates (J_gen)."""
    return f"{experiment_id}-c{cycle}"


def precheck_collection(experiment_id: str, cycle: int) -> str:
    """The novelty collection of one cycle's candidates that passed the static stages, entered before
    training (the novelty pre-check asks it about the earlier ones that may still end valid)."""
    return f"{experiment_id}-c{cycle}-static"


class EvaluationKind(enum.StrEnum):
    """What an evaluation of a candidate is for; its evaluation id is the candidate's id plus the
    kind's suffix (the evaluator keys its job folders and logs by it)."""

    PROXY = "proxy"  # the one-epoch proxy evaluation that decides the candidate
    RAW = "raw"  # what the model wrote, before repair (reported beside the repaired program's)
    PROMOTED = "promoted"  # promotion: the cycle's top-k trained for promotion.epochs
    FINAL = "full"  # final training: the run's top-k admitted trained for final_training.epochs


def evaluation_id(candidate_id: str, kind: EvaluationKind) -> str:
    return candidate_id if kind is EvaluationKind.PROXY else f"{candidate_id}-{kind.value}"
