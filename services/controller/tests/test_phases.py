"""The run's phases on in-process fakes of the four peers (services.controller.tests.fakes): what each
phase decides and records, in milliseconds. The same behaviours against real services are the
acceptance tests (test_filter, test_precheck, test_audit, tests/test_faults.py, …)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archloop import ids
from archloop.ids import EvaluationKind
from services.controller.phases.precheck import NoPrecheck, Precheck
from services.controller.states import ExperimentState, PrecheckState, Stage
from services.controller.tests.fakes import CORPUS_PROGRAM, FakePeers, fake_runner

NOVEL = "alpha beta gamma delta epsilon zeta eta theta"
NOVEL_AGAIN = "alpha  beta gamma delta epsilon zeta eta   theta"  # the same tokens: J = 1
WEAK = "one two three four five six seven eight"  # novel, under the accuracy threshold
BROKEN = "a program that does not run"
PROGRAMS = [CORPUS_PROGRAM, NOVEL, NOVEL_AGAIN, WEAK, BROKEN]
VERDICTS: dict[str, float | None] = {CORPUS_PROGRAM: 0.7, NOVEL: 0.6, NOVEL_AGAIN: 0.65, WEAK: 0.2}
EXPECTED = ["rejected", "admitted", "rejected", "rejected", "invalid"]


def _decisions(runner, cycle: int = 1) -> list[str]:
    return [c.decision.value for c in runner.ctx.ledger.candidates(runner.ctx.experiment_id, cycle)]


def _events(runner) -> list[str]:
    return [e.WhichOneof("payload") for e in runner.ctx.ledger.events(runner.ctx.experiment_id)]


async def test_a_cycle_admits_the_good_novel_one_and_fine_tunes_on_it(tmp_path: Path) -> None:
    fakes = FakePeers(PROGRAMS, VERDICTS)
    runner = fake_runner(tmp_path, fakes, candidates_per_cycle=5, novelty_precheck=False)
    assert await runner.run() == ExperimentState.COMPLETED
    assert _decisions(runner) == EXPECTED
    rows = runner.ctx.ledger.candidates("unit", 1)
    assert rows[0].near_dup_text_train and rows[2].near_dup_text_gen
    assert rows[2].nearest_gen == rows[1].candidate_id
    assert rows[1].candidate_id in fakes.novelty.collections[ids.corpus_collection("unit")]
    assert [job.job_id for job in fakes.trainer.jobs] == [ids.fine_tune_job_id("unit", 1)]
    assert _events(runner) == [
        "experiment_started", "cycle_started", "cycle_generated", "cycle_evaluated", "cycle_filtered",
        "cycle_fine_tuned", "cycle_completed", "experiment_completed",
    ]  # fmt: skip


async def test_the_precheck_skips_training_near_duplicates_and_decides_the_same(tmp_path: Path) -> None:
    fakes = FakePeers(PROGRAMS, VERDICTS)
    runner = fake_runner(tmp_path, fakes, candidates_per_cycle=5, novelty_precheck=True)
    assert isinstance(runner.precheck, Precheck)
    assert await runner.run() == ExperimentState.COMPLETED
    assert _decisions(runner) == EXPECTED  # the filter's decisions, with two trainings fewer
    rows = runner.ctx.ledger.candidates("unit", 1)
    skipped = {c.candidate_id for c in rows if c.precheck_state is PrecheckState.DECIDED_BEFORE_TRAINING}
    assert skipped == {rows[0].candidate_id, rows[2].candidate_id}
    assert skipped.isdisjoint(fakes.evaluator.evaluated) and len(fakes.evaluator.evaluated) == 3


async def test_a_restarted_generation_asks_only_for_what_the_cycle_lacks(tmp_path: Path) -> None:
    fakes = FakePeers(PROGRAMS, VERDICTS, per_request=2)
    runner = fake_runner(tmp_path, fakes, candidates_per_cycle=5, novelty_precheck=False)
    await runner.import_corpus()
    await runner._cycle(1)
    assert fakes.generator.requests == [(1, 0, 2), (1, 2, 2), (1, 4, 1)]
    # a second runner on the same ledger finds cycle 1 complete and asks for nothing more
    again = FakePeers(PROGRAMS, VERDICTS)
    resumed = fake_runner(tmp_path / "again", again, candidates_per_cycle=5)
    resumed.ctx.ledger = runner.ctx.ledger
    resumed.filtering.ctx.ledger = runner.ctx.ledger
    await resumed._cycle(1)
    assert again.generator.requests == [] and again.evaluator.evaluated == []


async def test_promotion_trains_the_top_k_longer_once_and_audits_once(tmp_path: Path) -> None:
    programs = [NOVEL, WEAK, "x y z w v u t s", "k l m n o p q r"]
    verdicts = {NOVEL: 0.6, WEAK: 0.2, programs[2]: 0.5, programs[3]: 0.45}
    fakes = FakePeers(programs, verdicts)
    runner = fake_runner(tmp_path, fakes, promotion={"top_k": 2, "epochs": 3})
    assert await runner.run() == ExperimentState.COMPLETED
    rows = runner.ctx.ledger.candidates("unit", 1)
    promoted = {e for e in fakes.evaluator.evaluated if e.endswith(EvaluationKind.PROMOTED.value)}
    assert promoted == {ids.evaluation_id(rows[i].candidate_id, EvaluationKind.PROMOTED) for i in (0, 2)}
    assert rows[0].promoted_accuracy == pytest.approx(0.8)  # the fake adds 0.1 a further epoch
    assert runner.ctx.ledger.cycle_of("unit", 1).audit_json
    before = len(fakes.evaluator.evaluated)
    await runner.filtering.promotion.promote(1)  # as after a restart: nothing runs twice
    assert len(fakes.evaluator.evaluated) == before
    assert _events(runner).count("cycle_audited") == 1


async def test_final_training_runs_the_top_admitted_once(tmp_path: Path) -> None:
    programs = [NOVEL, "x y z w v u t s"]
    fakes = FakePeers(programs, {NOVEL: 0.6, programs[1]: 0.5}, per_request=2)
    runner = fake_runner(tmp_path, fakes, candidates_per_cycle=2, final_training={"top_k": 1, "epochs": 3})
    assert await runner.run() == ExperimentState.COMPLETED
    best = runner.ctx.ledger.candidates("unit", 1)[0]
    assert fakes.evaluator.evaluated[-1] == ids.evaluation_id(best.candidate_id, EvaluationKind.FINAL)
    assert runner.ctx.ledger.candidate_of(best.candidate_id).final_accuracy == pytest.approx(0.8)
    before = len(fakes.evaluator.evaluated)
    await runner.final_training.run()
    assert len(fakes.evaluator.evaluated) == before


async def test_without_iteration_only_the_first_cycle_is_fine_tuned(tmp_path: Path) -> None:
    fakes = FakePeers([NOVEL, WEAK, "x y z w v u t s", "k l m n o p q r"], VERDICTS)
    runner = fake_runner(tmp_path, fakes, cycles=2, ablations={"no_iteration": True})
    assert await runner.run() == ExperimentState.COMPLETED
    assert [job.cycle for job in fakes.trainer.jobs] == [1]
    assert runner.ctx.ledger.cycle_of("unit", 2).fine_tune_skipped


async def test_a_stop_before_a_cycle_leaves_the_ledger_as_it_was(tmp_path: Path) -> None:
    fakes = FakePeers(PROGRAMS, VERDICTS)
    runner = fake_runner(tmp_path, fakes, candidates_per_cycle=5)
    runner.request_stop()
    assert await runner.run() == ExperimentState.STOPPED
    assert runner.ctx.ledger.candidates("unit") == [] and fakes.generator.requests == []


async def test_no_precheck_decides_nothing_and_waits_for_nothing(tmp_path: Path) -> None:
    twin = NoPrecheck()
    await twin.open(1)
    assert not await twin.decides(1, "c", "code")
    await twin.screened("c")
    fakes = FakePeers(PROGRAMS, VERDICTS)
    runner = fake_runner(tmp_path, fakes, candidates_per_cycle=5, novelty_precheck=False)
    assert isinstance(runner.precheck, NoPrecheck)
    assert await runner.run() == ExperimentState.COMPLETED
    assert all(c.stage is Stage.DECIDED for c in runner.ctx.ledger.candidates("unit", 1))
    assert fakes.evaluator.screened == []


def test_ids_are_made_in_one_place() -> None:
    assert ids.candidate_id("exp", 3, 7) == "exp-c3-0007" and ids.candidate_id("", 1, 0) == "adhoc-c1-0000"
    assert [ids.evaluation_id("exp-c3-0007", kind) for kind in EvaluationKind] == [
        "exp-c3-0007", "exp-c3-0007-raw", "exp-c3-0007-promoted", "exp-c3-0007-full"]  # fmt: skip
    assert ids.fine_tune_job_id("exp", 2) == "exp-c2" == ids.cycle_collection("exp", 2)
    assert ids.precheck_collection("exp", 2) == "exp-c2-static"
    assert ids.corpus_collection("exp") == "exp-corpus"
