"""The factor bandit (services/controller/factor_bandit.py): rewards, seeded Thompson draws that favour
the factor that pays, and its state read from a real ledger, the same after a restart (the ledger
reopened: what a controller killed mid-cycle finds)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from archloop import ids
from archloop.v1 import common_pb2, controller_pb2, evaluator_pb2
from services.controller import factor_bandit
from services.controller.ledger import Ledger
from services.controller.phases.parents import Parents
from services.controller.selection import Decision, Verdict

FACTORS = ["activation", "skip_connections", "width"]


def test_rewards_and_arms() -> None:
    assert factor_bandit.reward(False, True, "") == 0.0
    assert factor_bandit.reward(True, True, "") == 1.0  # wiring-new admission
    assert factor_bandit.reward(True, True, "AlexNet-1") == 0.5  # a known wiring
    assert factor_bandit.reward(True, False, "") == 0.5  # no wiring recorded: not counted as new
    state = factor_bandit.arms([("width", 1.0), ("width", 0.0), ("depth", 1.0)], FACTORS)
    assert state["width"] == factor_bandit.Arm("width", 2, 1.0) and state["activation"].trials == 0
    assert "depth" not in state and state["width"].mean == 0.5


def test_draws_are_seeded_and_favour_the_factor_that_pays() -> None:
    good = [("skip_connections", 1.0)] * 8 + [("activation", 0.0)] * 8 + [("width", 0.0)] * 8
    state = factor_bandit.arms(good, FACTORS)
    picks = [factor_bandit.choose(state, 7, 3, i) for i in range(60)]
    assert picks == [factor_bandit.choose(state, 7, 3, i) for i in range(60)]
    counts = Counter(factor for factor, _ in picks)
    assert counts["skip_connections"] > 50
    assert picks[0][1].startswith("thompson ") and "skip_connections 8/8" in picks[0][1]
    # with no outcome yet every factor is drawn
    fresh = Counter(factor_bandit.choose(factor_bandit.arms([], FACTORS), 7, 1, i)[0] for i in range(60))
    assert set(fresh) == set(FACTORS)


def _ctx(ledger: Ledger) -> SimpleNamespace:
    """In-process fake of the controller's run context (only what Parents reads), over a real ledger."""
    config = controller_pb2.ExperimentConfig(seed=11)
    config.generation.mode = common_pb2.GENERATION_MODE_REGION
    config.generation.factor_policy = controller_pb2.FACTOR_POLICY_BANDIT
    config.generation.factors.extend(FACTORS)
    return SimpleNamespace(config=config, ledger=ledger, experiment_id="e")


def test_the_bandit_reads_earlier_cycles_from_the_ledger_and_draws_the_same_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    outcomes = [("skip_connections", True, "")] * 5 + [("width", False, "")] * 5 + [("activation", True, "x")]
    for i, (factor, admitted, known_as) in enumerate(outcomes):
        candidate_id = ids.candidate_id("e", 1, i)
        candidate = common_pb2.Candidate(candidate_id=candidate_id, cycle=1, index=i, code="x = 1\n")
        candidate.generation.factor = factor
        candidate.generation.mode = common_pb2.GENERATION_MODE_REGION
        assert ledger.record_generated("e", candidate)
        status = evaluator_pb2.EVALUATION_STATUS_OK
        ledger.record_evaluation(candidate_id, evaluator_pb2.EvaluationResult(status=status, accuracy=0.5))
        ledger.record_topology(candidate_id, f"wiring-{i}", "", known_as)
        ledger.record_decision(
            candidate_id, Decision(Verdict.ADMITTED if admitted else Verdict.REJECTED, "", 0)
        )
    # a cycle-2 candidate already decided must not count for cycle 2's own draws
    late = common_pb2.Candidate(candidate_id=ids.candidate_id("e", 2, 0), cycle=2, index=0, code="y = 1\n")
    late.generation.factor = "width"
    assert ledger.record_generated("e", late)
    ledger.record_decision(late.candidate_id, Decision(Verdict.ADMITTED, "", 0))

    choices = Parents(_ctx(ledger)).factor_choices(2, 0, 24)
    assert "skip_connections 5/5, width 0/5" in choices[0][1] and "activation 0.5/1" in choices[0][1]
    assert Counter(f for f, _ in choices).most_common(1)[0][0] == "skip_connections"
    ledger.close()
    restarted = Parents(_ctx(Ledger(path))).factor_choices(2, 0, 24)
    assert restarted == choices
    assert Parents(_ctx(Ledger(path))).factor_choices(2, 12, 12) == choices[12:]  # a resumed cycle's rest
    listed = _ctx(Ledger(path))
    listed.config.generation.factor_policy = controller_pb2.FACTOR_POLICY_LIST
    assert Parents(listed).factor_choices(2, 0, 4) == []
