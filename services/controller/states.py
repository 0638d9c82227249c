"""The controller's states as enums, and the one table between them and the protos' enums.

The ledger stores the enums' values as text (a StrEnum compares equal to its value, so rows read
back as plain strings match them). `short_name` (archloop.enums) is the one way a proto enum value
becomes text.
"""

from __future__ import annotations

import enum

from archloop.enums import short_name as short_name  # where the controller's modules find it
from archloop.v1 import controller_pb2
from services.controller.selection import Ablations, Policy, Thresholds


class ExperimentState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


TERMINAL = frozenset({ExperimentState.COMPLETED, ExperimentState.FAILED, ExperimentState.STOPPED})


class Phase(enum.StrEnum):
    """A cycle's phase. FINE_TUNED: the adapter is recorded, the cycle not yet closed (a restart there
    completes the cycle without training again); the API shows it as FINE_TUNING."""

    GENERATING = "GENERATING"
    EVALUATING = "EVALUATING"
    FILTERING = "FILTERING"
    FINE_TUNING = "FINE_TUNING"
    FINE_TUNED = "FINE_TUNED"
    COMPLETED = "COMPLETED"


class Stage(enum.StrEnum):
    """A candidate's progress through its cycle."""

    GENERATED = "generated"
    EVALUATED = "evaluated"
    DECIDED = "decided"


class PrecheckState(enum.StrEnum):
    """A candidate's part in the novelty pre-check (the ledger stores it as PRECHECK_STORED's integer)."""

    NONE = "none"  # not decided by it (or the pre-check is off)
    DECIDED_BEFORE_TRAINING = "decided_before_training"  # a near-duplicate, never trained
    TRAINED_LATER = "trained_for_a_later_decision"  # so, then trained by the filter for a later one


PRECHECK_STORED = {
    PrecheckState.NONE: 0,
    PrecheckState.DECIDED_BEFORE_TRAINING: 1,
    PrecheckState.TRAINED_LATER: 2,
}
PRECHECK_FROM_STORED = {stored: state for state, stored in PRECHECK_STORED.items()}

EXPERIMENT_STATE_TO_PROTO = {
    state: controller_pb2.ExperimentState.Value(f"EXPERIMENT_STATE_{state.value}")
    for state in ExperimentState
}
PHASE_TO_PROTO = {
    Phase.GENERATING: controller_pb2.CYCLE_PHASE_GENERATING,
    Phase.EVALUATING: controller_pb2.CYCLE_PHASE_EVALUATING,
    Phase.FILTERING: controller_pb2.CYCLE_PHASE_FILTERING,
    Phase.FINE_TUNING: controller_pb2.CYCLE_PHASE_FINE_TUNING,
    Phase.FINE_TUNED: controller_pb2.CYCLE_PHASE_FINE_TUNING,
    Phase.COMPLETED: controller_pb2.CYCLE_PHASE_COMPLETED,
}
POLICY_FROM_PROTO = {
    controller_pb2.SELECTION_POLICY_THRESHOLD: Policy.THRESHOLD,
    controller_pb2.SELECTION_POLICY_THRESHOLD_TOP_K_FILL: Policy.THRESHOLD_TOP_K_FILL,
    controller_pb2.SELECTION_POLICY_TOP_K: Policy.TOP_K,
}


def selection_rules(config: controller_pb2.ExperimentConfig) -> tuple[Policy, Thresholds, Ablations]:
    """The experiment's policy, thresholds and ablations, as `selection.decide` takes them."""
    return (
        POLICY_FROM_PROTO[config.selection_policy],
        Thresholds(
            config.accuracy_threshold,
            config.selection_top_k,
            config.structural_novelty_threshold,
            new_wiring=config.architecture_novelty == controller_pb2.ARCHITECTURE_NOVELTY_REQUIRE,
        ),
        Ablations(
            no_accuracy_threshold=config.ablations.no_accuracy_threshold,
            no_novelty_filter=config.ablations.no_novelty_filter,
        ),
    )
