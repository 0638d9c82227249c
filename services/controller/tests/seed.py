"""Candidates written into a ledger the way the loop writes them (record_generated, then
record_evaluation), for tests that start from an evaluated cycle."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from archloop import corpus, ids
from archloop.clients import aio_channel
from archloop.v1 import common_pb2, evaluator_pb2, novelty_pb2_grpc
from services.controller.evaluators import EvaluatorPool
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner
from services.controller.peers import Peers


def add_evaluated(
    ledger: Ledger,
    experiment_id: str,
    cycle: int,
    index: int,
    code: str,
    accuracy: float | None,
    repaired: bool = False,
    raw_status: str = "",
) -> str:
    """A candidate valid with `accuracy`, or FORWARD_ERROR when `accuracy` is None; its id."""
    candidate_id = ids.candidate_id(experiment_id, cycle, index)
    candidate = common_pb2.Candidate(candidate_id=candidate_id, cycle=cycle, index=index, code=code)
    candidate.generation.repaired = repaired
    assert ledger.record_generated(experiment_id, candidate)
    status = (
        evaluator_pb2.EVALUATION_STATUS_OK
        if accuracy is not None
        else evaluator_pb2.EVALUATION_STATUS_FORWARD_ERROR
    )
    result = evaluator_pb2.EvaluationResult(status=status, accuracy=accuracy or 0.0)
    ledger.record_evaluation(candidate_id, result, raw_status)
    return candidate_id


def write_corpus(corpus_dir: Path, programs: dict[str, str] | None = None, graphs: bool = False) -> Path:
    """A corpus folder of one CIFAR-10 pair per program (default: the first LEMUR file); with `graphs`,
    their architecture graphs too, as `archloop corpus build` records them (what StartExperiment needs)."""
    if programs is None:
        from archloop.lemur import iter_model_sources, lemur_wheel

        programs = dict([next(iter_model_sources(lemur_wheel()))])
    corpus_dir.mkdir(parents=True, exist_ok=True)
    records = [
        corpus.example_records(name, code, {"cifar-10": 100_000})[0] for name, code in programs.items()
    ]
    (corpus_dir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if graphs:
        from tools.corpus_architecture import record_architectures

        assert record_architectures(corpus_dir).recorded == len(programs)
    return corpus_dir


def evaluator_and_novelty(start_service, tmp_path: Path) -> Peers:
    """A real evaluator and a real novelty service (processes), as the loop's peers (no generator, no
    trainer): for tests that drive the evaluation and filter phases on fixed programs."""
    novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
    evaluator = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"))
    return Peers(
        None,
        EvaluatorPool(evaluator.address),
        novelty_pb2_grpc.NoveltyServiceStub(aio_channel(novelty.address)),
        None,
    )


async def evaluate_programs(runner: ExperimentRunner, cycle: int, programs: list[str]) -> list[str]:
    """Record `programs` as the cycle's generated candidates and evaluate them all at once, as the loop
    does (as many in flight as the evaluator allows); their ids."""
    made = []
    for index, code in enumerate(programs):
        candidate_id = ids.candidate_id(runner.ctx.experiment_id, cycle, index)
        candidate = common_pb2.Candidate(candidate_id=candidate_id, cycle=cycle, index=index, code=code)
        assert runner.ctx.ledger.record_generated(runner.ctx.experiment_id, candidate)
        made.append(candidate_id)
    evaluate = runner.evaluation.evaluate
    await asyncio.gather(*(evaluate(cycle, i, c, "") for i, c in zip(made, programs, strict=True)))
    return made
