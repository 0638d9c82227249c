"""Test doubles: in-process fakes of the controller's four peer clients (services.controller.peers),
for unit tests of the run's phases in milliseconds. Each fake keeps the client's method signatures and
records what it was asked; none talks gRPC. The whole-stack tests with real services (faults, archive
loop, promotion loop, pre-check) remain the acceptance gate.

- FakeGenerator streams the programs it was given, in order, as candidates of the request's cycle.
- FakeEvaluator answers from `verdicts` (code → accuracy, None = a FORWARD_ERROR); a static-only screen
  passes whatever has a verdict.
- FakeNovelty: Jaccard of whitespace-token sets (not MinHash), per collection, near-duplicate at τ.
- FakeTrainer: every job succeeds at once with an adapter named after the job; `interrupt_first` makes
  the first follow end INTERRUPTED, as a trainer restart would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from archloop import ids
from archloop.v1 import common_pb2, controller_pb2, evaluator_pb2, novelty_pb2, trainer_pb2
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner
from services.controller.phases.context import LoopSettings
from services.controller.tests.seed import write_corpus


class FakeGenerator:
    def __init__(self, programs: list[str], per_request: int = 8) -> None:
        self.programs, self.per_request = programs, per_request
        self.requests: list[tuple[int, int, int]] = []  # (cycle, start_index, n)

    async def max_candidates_per_request(self) -> int:
        return self.per_request

    async def prompt_fits(self, task, mode, codes: list[str]) -> list[bool]:
        return [True] * len(codes)

    async def stream(self, request, on_candidate: Callable[[common_pb2.Candidate], Awaitable[None]]) -> None:
        self.requests.append((request.cycle, request.start_index, request.n))
        for index in range(request.start_index, request.start_index + request.n):
            code = self.programs[index % len(self.programs)]
            await on_candidate(common_pb2.Candidate(
                candidate_id=ids.candidate_id(request.experiment_id, request.cycle, index),
                experiment_id=request.experiment_id, cycle=request.cycle, index=index, code=code,
            ))  # fmt: skip


class FakeEvaluator:
    def __init__(self, verdicts: dict[str, float | None]) -> None:
        self.verdicts = verdicts
        self.evaluated: list[str] = []  # evaluation ids, in order
        self.screened: list[str] = []

    async def evaluate(self, request, timeout: float) -> evaluator_pb2.EvaluationResult:
        self.evaluated.append(request.candidate_id)
        await asyncio.sleep(0)
        accuracy = self.verdicts.get(request.code)
        if accuracy is None:
            return evaluator_pb2.EvaluationResult(status=evaluator_pb2.EVALUATION_STATUS_FORWARD_ERROR)
        bonus = 0.1 * (request.protocol.epochs - 1) if request.protocol.epochs > 1 else 0.0
        return evaluator_pb2.EvaluationResult(
            status=evaluator_pb2.EVALUATION_STATUS_OK, accuracy=min(1.0, accuracy + bonus), param_count=1000
        )

    async def screen(self, request, timeout: float) -> evaluator_pb2.EvaluationResult:
        self.screened.append(request.candidate_id)
        ok = request.code in self.verdicts
        status = evaluator_pb2.EVALUATION_STATUS_OK if ok else evaluator_pb2.EVALUATION_STATUS_PARSE_ERROR
        return evaluator_pb2.EvaluationResult(status=status)


def _jaccard(a: str, b: str) -> float:
    x, y = set(a.split()), set(b.split())
    return len(x & y) / len(x | y) if x | y else 1.0


class FakeNovelty:
    def __init__(self) -> None:
        self.collections: dict[str, dict[str, str]] = {}
        self.thresholds: dict[str, float] = {}

    async def create_collection(self, name: str, near_duplicate_threshold: float) -> None:
        self.collections.setdefault(name, {})
        self.thresholds.setdefault(name, near_duplicate_threshold)

    async def import_entries(self, collection: str, codes: dict[str, str], structure=None):
        entries = self.collections[collection]
        created = sum(entry_id not in entries for entry_id in codes)
        entries.update(codes)
        return novelty_pb2.ImportEntriesResponse(received=len(codes), created=created)

    def _match(self, code: str, collection: str, among: list[str] | None) -> novelty_pb2.CollectionMatch:
        entries = self.collections[collection]
        scored = [(_jaccard(code, other), entry_id) for entry_id, other in entries.items()
                  if among is None or entry_id in among]  # fmt: skip
        best, nearest = max(scored, default=(0.0, ""))
        return novelty_pb2.CollectionMatch(collection=collection, max_jaccard=best, nearest_entry_id=nearest,
                                           near_duplicate=best >= self.thresholds[collection])  # fmt: skip

    async def check(self, code: str, collections: list[str], structural_tokens=None, among=None):
        return [self._match(code, name, among) for name in collections]

    async def admit(self, collection, entry_id, code, structural_tokens=None, labels=None) -> None:
        self.collections[collection][entry_id] = code

    async def check_and_admit(self, collection, entry_id, code, structural_tokens=None, labels=None):
        match = self._match(code, collection, None)
        if match.near_duplicate and match.nearest_entry_id != entry_id:
            return novelty_pb2.CheckAndAdmitResponse(admitted=False, reason=f"near-duplicate of {collection}")
        self.collections[collection][entry_id] = code
        return novelty_pb2.CheckAndAdmitResponse(admitted=True)


class FakeTrainer:
    def __init__(self) -> None:
        self.jobs: list[trainer_pb2.StartFineTuneRequest] = []

    async def run(self, request, on_step=lambda step: None) -> trainer_pb2.FineTuneJob:
        self.jobs.append(request)
        on_step(trainer_pb2.FineTuneStep(step=1, total_steps=1, loss=0.5))
        adapter = common_pb2.AdapterRef(name=request.job_id, path=f"/adapters/{request.job_id}",
                                        weights_sha256="0" * 64)  # fmt: skip
        return trainer_pb2.FineTuneJob(job_id=request.job_id, state=trainer_pb2.FINE_TUNE_STATE_SUCCEEDED,
                                       loss=0.5, adapter=adapter)  # fmt: skip


class FakePeers:
    """The four fakes where services.controller.peers.Clients would hold the real clients."""

    def __init__(self, programs: list[str], verdicts: dict[str, float | None], per_request: int = 8) -> None:
        self.generator = FakeGenerator(programs, per_request)
        self.evaluator = FakeEvaluator(verdicts)
        self.novelty = FakeNovelty()
        self.trainer = FakeTrainer()


CORPUS_PROGRAM = "import torch class Net conv relu pool linear corpus-only"


def fake_runner(
    tmp_path: Path, fakes: FakePeers, experiment_id: str = "unit", **overrides: object
) -> ExperimentRunner:
    """A runner over a real ledger file and a one-program corpus, its peers the fakes."""
    mapping = {"cycles": 1, "candidates_per_cycle": 4, "promotion": {"top_k": 0}, **overrides}
    config = experiment_config.with_defaults(experiment_config.from_mapping(mapping))
    experiment_config.validate(config)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment(
        experiment_id, experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    corpus_dir = write_corpus(tmp_path / "corpus", {"lemur-model": CORPUS_PROGRAM})
    settings = LoopSettings(tmp_path / "work", corpus_dir)
    return ExperimentRunner(experiment_id, config, ledger, None, settings, clients=fakes)  # type: ignore[arg-type]


def config_of(runner: ExperimentRunner) -> controller_pb2.ExperimentConfig:
    return runner.ctx.config
