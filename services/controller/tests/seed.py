"""Candidates written into a ledger the way the loop writes them (record_generated, then
record_evaluation), for tests that start from an evaluated cycle."""

from __future__ import annotations

import json
from pathlib import Path

from archloop import corpus
from archloop.v1 import common_pb2, evaluator_pb2
from services.controller.ledger import Ledger


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
    candidate_id = f"{experiment_id}-c{cycle}-{index:04d}"
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


def write_corpus(corpus_dir: Path, programs: dict[str, str] | None = None) -> Path:
    """A corpus folder of one CIFAR-10 pair per program (default: the first LEMUR file)."""
    if programs is None:
        from archloop.lemur import iter_model_sources, lemur_wheel

        programs = dict([next(iter_model_sources(lemur_wheel()))])
    corpus_dir.mkdir(parents=True, exist_ok=True)
    records = [
        corpus.example_records(name, code, {"cifar-10": 100_000})[0] for name, code in programs.items()
    ]
    (corpus_dir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return corpus_dir
