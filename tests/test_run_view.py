"""What `archloop run` says while it follows an experiment: a line when nothing has moved for a minute,
naming what the run waits for (tools.run_view; the experiment is a real controller message)."""

from __future__ import annotations

from archloop.v1 import controller_pb2, trainer_pb2
from tools.run_view import _Stillness


def _experiment(phase: int, evaluated: int = 0, step: int = 0) -> controller_pb2.Experiment:
    return controller_pb2.Experiment(
        state=controller_pb2.EXPERIMENT_STATE_RUNNING, current_cycle=2, current_phase=phase,
        candidates_generated=24, candidates_evaluated=evaluated,
        fine_tune=trainer_pb2.FineTuneStep(step=step, total_steps=10),
    )  # fmt: skip


def test_a_run_that_stands_still_for_a_minute_says_what_it_waits_for_once_a_minute() -> None:
    still, start = _Stillness(), 1000.0
    fine_tuning = _experiment(controller_pb2.CYCLE_PHASE_FINE_TUNING, 24, step=3)
    assert still.waiting_for(fine_tuning, start) is None  # first sight
    assert still.waiting_for(fine_tuning, start + 59) is None
    said = still.waiting_for(fine_tuning, start + 61)
    assert said is not None and "nothing has moved for 61 s" in said
    assert "cycle 2 waits for the trainer (step 3 of 10)" in said
    assert still.waiting_for(fine_tuning, start + 90) is None  # not again within the minute
    assert "for 122 s" in (still.waiting_for(fine_tuning, start + 122) or "")
    moved = _experiment(controller_pb2.CYCLE_PHASE_FINE_TUNING, 24, step=4)
    assert still.waiting_for(moved, start + 123) is None and still.waiting_for(moved, start + 180) is None
    evaluating = _experiment(controller_pb2.CYCLE_PHASE_EVALUATING, 5)
    still.waiting_for(evaluating, start + 200)
    assert "the evaluators (5 of 24 evaluated)" in (still.waiting_for(evaluating, start + 261) or "")
