"""Searches without a language model (issue 35) through a real `archloop run` (the CLI, the whole stack):

- engine: each candidate a verified mutation-engine edit of a parent picked by aging evolution; the
  controller is killed (kill -9) in cycle 2 and the supervisor's new one resumes the run. Every
  candidate records mode `engine`, its parent and its edit, and both are exactly what the policy and
  the engine give for its seed (so the resumed controller made what the first would have); no cycle
  fine-tunes and the trainer never gets a job.
- corpus_sample: corpus programs as they are, each trained, each rejected as its corpus program's
  near-duplicate; no fine-tune.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from test_supervisor import Run, _reached

from archloop import corpus, evolve, mutate
from archloop.v1 import controller_pb2
from services.controller import archive
from services.controller.ledger import Ledger
from services.trainer.jobs import JobStore

pytestmark = [pytest.mark.slow, pytest.mark.system]  # the whole-stack tier: make test-system
CYCLES, PER_CYCLE, POPULATION = 3, 4, 2


def _finish(run: Run) -> Ledger:
    try:
        assert run.proc.wait(timeout=900) == 0, run.output()
    finally:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)
            run.proc.wait(timeout=120)
    ledger = Ledger(run.home / "data" / "controller" / "ledger.sqlite3")
    assert ledger.experiment_of(run.name).state == "COMPLETED", run.output()
    return ledger


def _no_fine_tune(run: Run, ledger: Ledger) -> None:
    for cycle in ledger.cycles(run.name):
        assert cycle.fine_tune_skipped and not cycle.fine_tune_adapter_name
    assert JobStore(run.home / "data" / "trainer" / "trainer.sqlite3").jobs(run.name) == []


def test_engine_mode_runs_with_aging_parents_and_resumes_after_a_controller_kill(
    tmp_path: Path, small_corpus: Path
) -> None:
    run = Run(tmp_path, small_corpus, "engine", config_overrides={
        "cycles": CYCLES, "candidates_per_cycle": PER_CYCLE, "seed": 5,
        "generation": {"mode": "engine", "parent_policy": "aging", "tournament_size": 2,
                       "population_size": POPULATION},
        "accuracy_threshold": 0.05, "ablations": {"no_novelty_filter": True},  # admit what trains
    })  # fmt: skip
    try:
        run.wait_for_stack()
        deadline = time.monotonic() + 600
        while not _reached(2, "GENERATING", at := run.where()):
            assert time.monotonic() < deadline and run.proc.poll() is None, run.output()
            time.sleep(0.05)
        pid = run.pid("controller")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        run.wait_until_back("controller", pid)
    finally:
        ledger = _finish(run)
    assert "controller died (killed by SIGKILL); restarting it" in run.output(), at
    _no_fine_tune(run, ledger)

    candidates = ledger.candidates(run.name)
    assert len(candidates) == CYCLES * PER_CYCLE and {c.mode for c in candidates} == {"engine"}
    assert all(c.adapter_name == "" for c in candidates)
    entries = ledger.archive(run.name)
    assert [e.entry_id for e in entries[1:]] == [
        c.candidate_id for c in ledger.admitted(run.name) if c.cycle < CYCLES
    ]
    assert len(entries) > POPULATION + 1, "too few admissions for the population to age"
    for cycle in range(1, CYCLES + 1):
        before = ledger.archive(run.name, before_cycle=cycle)
        parents = archive.choose_parents(
            controller_pb2.PARENT_POLICY_AGING, before, 5, cycle, range(PER_CYCLE), 2, POPULATION
        )
        young = {e.entry_id for e in before[-POPULATION:]}
        for c, parent in zip(ledger.candidates(run.name, cycle), parents, strict=True):
            generation = json.loads(c.generation_json)
            assert generation["parent_id"] == parent.entry_id in young  # the older entries have left
            made = evolve.child(parent.code, f"5:{cycle}:{c.idx}", mutate.FACTORS)
            assert made is not None and c.code == made.code and c.factor == made.factor
            assert generation["engine_edit"] == made.edit and generation["touched_factors"] == [made.factor]
    assert ledger.candidates(run.name, 1)[0].valid is not None


def test_corpus_sample_mode_trains_corpus_programs_and_admits_none(
    tmp_path: Path, small_corpus: Path
) -> None:
    """Also a newcomer's run with the experiment page open: the output has no error line at the end
    (the live-update stream's NATS subscription is closed before the process exits)."""
    run = Run(tmp_path, small_corpus, "sample", config_overrides={
        "cycles": 1, "candidates_per_cycle": PER_CYCLE, "generation": {"mode": "corpus_sample"},
    })  # fmt: skip
    reader = run.watch_live_updates()
    ledger = _finish(run)
    reader.join(30)
    assert not reader.is_alive(), "the live-update stream did not end with the run"
    assert any(b"event: ready" in line for line in run.streamed), run.streamed
    output = run.output()
    for noise in ("[error", "Task was destroyed", "Traceback", "Exception ignored"):
        assert noise not in output, output
    _no_fine_tune(run, ledger)
    programs = corpus.training_programs(small_corpus)
    candidates = ledger.candidates(run.name)
    assert len(candidates) == PER_CYCLE and {c.mode for c in candidates} == {"corpus_sample"}
    drawn = [json.loads(c.generation_json)["corpus_model"] for c in candidates]
    assert len(set(drawn)) == PER_CYCLE
    assert all(programs[m] == c.code for m, c in zip(drawn, candidates, strict=True))
    assert all(c.valid is not None and not c.decided_before_training for c in candidates)  # all trained
    for c in candidates:
        if c.valid:
            assert c.decision == "rejected" and c.nn_jaccard_train == 1.0, c.reason
    assert not ledger.admitted(run.name)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "mode corpus_sample (no language model: nothing is sampled by a model and no cycle" in page
