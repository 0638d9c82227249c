"""What every phase of a run works with: the run context (experiment, config, ledger, peers, settings,
the stop flag and the notify event) and the narrow interfaces one phase is handed of another.

Phases do not import one another (an import contract in pyproject.toml): the runner
(services.controller.loop) builds them and hands each what it needs, typed by the protocols below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from archloop import prompts
from archloop.v1 import common_pb2, controller_pb2
from services.controller import requests
from services.controller.known_wiring import KnownWiring
from services.controller.ledger import CandidateRow, CycleRow, Ledger
from services.controller.peers import Clients, StopRequested


@dataclass(frozen=True)
class LoopSettings:
    work_dir: Path  # per-experiment files (training sets) go to <work_dir>/<experiment>/
    corpus_dir: Path  # the LEMUR corpus (examples.jsonl)
    retry_budget_seconds: float = 600.0
    rpc_timeout_seconds: float = 60.0
    progress_deadline_seconds: float = 900.0  # a silent generation stream or fine-tune watch (peers.Stalled)


class Stop:
    """A run's stop request: a flag the phases check at safe points, and an event to wait on."""

    def __init__(self) -> None:
        self.requested = False
        self.event = asyncio.Event()

    def request(self) -> None:
        self.requested = True
        self.event.set()

    def check(self) -> None:
        if self.requested:
            raise StopRequested()


@dataclass
class RunContext:
    experiment_id: str
    config: controller_pb2.ExperimentConfig
    ledger: Ledger
    peers: Clients
    settings: LoopSettings
    notify: asyncio.Event
    stop: Stop
    prompt_task: prompts.Task = field(init=False)
    wiring: KnownWiring = field(init=False)  # the corpus's and the admitted candidates' wirings

    def __post_init__(self) -> None:
        self.prompt_task = requests.prompt_task(self.config)
        self.wiring = KnownWiring(self.ledger, self.settings.corpus_dir, self.experiment_id)

    def step(self, cycle: int, kind: str, payload: dict, **fields: object) -> None:
        """Record a step of the cycle (its fields, usually its new phase) and its event in one ledger
        transaction, then wake the event publisher and watchers."""
        event = requests.event(self.experiment_id, cycle, kind, **payload)
        self.ledger.set_cycle(self.experiment_id, cycle, event, **fields)
        self.notify.set()


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel the tasks and wait until each has ended (what a failure or a stop leaves behind)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


Record = Callable[[common_pb2.Candidate], Awaitable[None]]  # a candidate into the ledger, then evaluated


class CandidateSource(Protocol):
    """Where a cycle's candidates come from: the generator's language model
    (services.controller.phases.generation), or a search without one (phases.engine,
    phases.corpus_sample)."""

    name: str  # how an error names it

    async def batch_size(self) -> int:
        """The most candidates one `produce` call may ask for."""
        ...

    async def produce(self, cycle: int, row: CycleRow, start: int, n: int, record: Record) -> None:
        """Candidates start … start + n - 1 of the cycle (`row`), each handed to `record` as it comes."""
        ...


class ProxyEvaluation(Protocol):
    """The one-epoch proxy evaluation of a candidate (services.controller.phases.evaluation)."""

    async def evaluate(self, cycle: int, candidate_id: str, code: str, error: str) -> None: ...

    async def run_proxy(self, cycle: int, candidate_id: str, code: str) -> None: ...


class PrecheckPhase(Protocol):
    """The novelty pre-check (services.controller.phases.precheck), or its no-op twin."""

    async def open(self, cycle: int) -> None: ...

    async def decides(self, cycle: int, candidate_id: str, code: str) -> bool: ...

    async def screened(self, candidate_id: str) -> None: ...

    async def untrained_neighbour(self, c: CandidateRow, untrained: list[str]) -> str:
        """The id of a candidate decided before training whose text `c` is a near-duplicate of ('' when
        none, or without the pre-check)."""
        ...


class Promotion(Protocol):
    """Promotion of the cycle's top-k and its proxy audit (services.controller.phases.promotion)."""

    async def promote(self, cycle: int) -> None: ...
