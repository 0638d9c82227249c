"""The progress watchdog as a table: records at times in, the verdict out (pure; no sandbox, no clock)."""

from __future__ import annotations

import pytest

from services.evaluator.watchdog import NO_PROGRESS, STAGE_TIMEOUT, TOO_SLOW, Deadlines, Watchdog

DEADLINES = Deadlines(instantiate_seconds=10, forward_seconds=5, setup_seconds=4, first_batch_seconds=20,
                      project_after_batches=3, batch_seconds=25)  # fmt: skip


def _batch(seen: int, elapsed: float) -> dict:
    return {"stage": "train", "step": "learn", "images_seen": seen, "images_total": 1000,
            "elapsed_seconds": elapsed}  # fmt: skip


STEPS = {
    "instantiate": {"stage": "instantiate", "step": "instantiate"},
    "forward": {"stage": "forward", "step": "forward"},
    "setup": {"stage": "train", "step": "setup"},
    "learn": {"stage": "train", "step": "learn"},
    "evaluate": {"stage": "accuracy", "step": "evaluate"},
}

# (case, [(time, record)], check time, expected (stage, status) or None)
CASES = [
    ("instantiate within its deadline", [], 9.9, None),
    ("module code or Net() spins", [], 10.1, ("instantiate", STAGE_TIMEOUT)),
    ("forward spins", [(3, STEPS["forward"])], 8.1, ("forward", STAGE_TIMEOUT)),
    ("forward in time", [(3, STEPS["forward"])], 7.9, None),
    ("train_setup spins", [(3, STEPS["forward"]), (4, STEPS["setup"])], 8.5, ("train", STAGE_TIMEOUT)),
    ("no first batch", [(1, STEPS["forward"]), (2, STEPS["setup"]), (3, STEPS["learn"])], 23.5,
     ("train", NO_PROGRESS)),
    ("first batch slow but in time", [(1, STEPS["forward"]), (2, STEPS["setup"]), (3, STEPS["learn"]),
                                      (22, _batch(64, 22))], 46, None),
    ("projected over the limit", [(3, STEPS["learn"]), (4, _batch(100, 4)), (5, _batch(110, 5)),
                                  (6, _batch(120, 6)), (7, _batch(130, 7))], 7, ("train", TOO_SLOW)),
    ("too few batches to project", [(3, STEPS["learn"]), (4, _batch(100, 4)), (5, _batch(110, 5)),
                                    (6, _batch(120, 6))], 7, None),
    ("projected within the limit", [(3, STEPS["learn"]), (4, _batch(100, 4)), (5, _batch(300, 5)),
                                    (6, _batch(500, 6)), (7, _batch(700, 7))], 7, None),
    ("batches keep coming: no stage deadline once learning began",
     [(3, STEPS["learn"]), (4, _batch(64, 4)), (20, _batch(128, 20)), (40, _batch(192, 40))], 64, None),
    ("stalls after its first batches", [(3, STEPS["learn"]), (4, _batch(64, 4)), (5, _batch(128, 5))], 30.5,
     ("train", NO_PROGRESS)),
    ("a record without new images is no progress", [(3, STEPS["learn"]), (4, _batch(64, 4)),
                                                   (20, _batch(64, 20))], 29.5, ("train", NO_PROGRESS)),
    ("stalls in its accuracy pass", [(3, STEPS["learn"]), (4, _batch(1000, 4)), (5, STEPS["evaluate"])], 30.5,
     ("accuracy", NO_PROGRESS)),
    ("its accuracy pass moves", [(5, STEPS["evaluate"]), (20, STEPS["evaluate"]), (40, STEPS["evaluate"])],
     64, None),
    ("the next epoch after the accuracy pass", [(3, STEPS["learn"]), (4, _batch(1000, 4)),
                                                (5, STEPS["evaluate"]), (6, STEPS["learn"])], 30.5, None),
]  # fmt: skip


@pytest.mark.parametrize(("case", "records", "at", "expected"), CASES, ids=[c[0] for c in CASES])
def test_watchdog_table(case, records, at, expected) -> None:
    dog = Watchdog(DEADLINES, time_limit_seconds=60, epochs=1, started=0.0)
    for when, record in records:
        dog.observe(record, when)
    stop = dog.check(at)
    assert ((stop.stage, stop.status) if stop else None) == expected, stop


def test_messages_name_the_deadline_and_the_projection() -> None:
    dog = Watchdog(DEADLINES, time_limit_seconds=60, epochs=2, started=0.0)
    assert dog.check(10.5).message == (
        "instantiate: module code and Net(...) did not return within its stage deadline of 10 s"
    )
    dog.observe({**STEPS["learn"], "elapsed_seconds": 1.0}, 1)
    assert (
        dog.check(21.5).message == "train: no training batch finished within the first-batch deadline of 20 s"
    )
    for seen, t in ((100, 4), (110, 5), (120, 6), (130, 7)):
        dog.observe(_batch(seen, t), t)
    assert dog.check(7).message == (
        "train: at 10.0 images/s the training (2 epoch(s) of 1,000 images) would end at about 194 s, "
        "over the time limit of 60 s (projected from 4 batches)"
    )
    assert dog.step_seconds["instantiate"] == 1 and dog.step_seconds["first_batch"] == 3


def test_zero_turns_a_deadline_off() -> None:
    dog = Watchdog(Deadlines(0, 0, 0, 0, 0, 0), time_limit_seconds=60, epochs=1, started=0.0)
    assert dog.check(1e6) is None
    dog.observe(STEPS["learn"], 1)
    assert dog.check(1e6) is None


def test_a_stall_message_names_where_it_stalled() -> None:
    dog = Watchdog(DEADLINES, time_limit_seconds=600, epochs=1, started=0.0)
    for when, record in ((3, STEPS["learn"]), (4, _batch(64, 4)), (5, _batch(128, 5))):
        dog.observe(record, when)
    assert (
        dog.check(31).message
        == "train: no training batch finished after 128 images within the batch deadline of 25 s"
    )
    dog.observe(STEPS["evaluate"], 32)
    assert (
        dog.check(58).message
        == "accuracy: no batch of the accuracy pass finished within the batch deadline of 25 s"
    )
