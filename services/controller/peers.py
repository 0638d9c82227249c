"""The controller's four peers as typed clients, and the one retry rule they share.

`Peers` holds what the servicer connects once (three stubs and the evaluator pool); an experiment's
runner binds them to its own `Retry` (`Clients(peers, retry)`): every call is retried with
exponential backoff on UNAVAILABLE / RESOURCE_EXHAUSTED (and a stream that stalled: nothing within its
progress deadline) until the retry budget is spent, then fails
the experiment with `PeerFailed` naming the call; a stop request is honoured before each attempt.
The phases (services.controller.phases) call these methods, which build every message; they import no
grpc.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import structlog

from archloop.clients import backoff_delays
from archloop.v1 import (
    common_pb2,
    evaluator_pb2,
    evaluator_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    novelty_pb2,
    novelty_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from services.controller.evaluators import EvaluatorPool

log = structlog.get_logger("archloop.controller")

T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
STREAM_TIMEOUT_SECONDS = 24 * 3600  # a generation or a fine-tune is followed as long as it moves
PROGRESS_DEADLINE_SECONDS = (
    900.0  # …but a stream silent this long is stalled (Retry.progress_deadline_seconds)
)
TRAINER_TERMINAL = {
    trainer_pb2.FINE_TUNE_STATE_SUCCEEDED,
    trainer_pb2.FINE_TUNE_STATE_FAILED,
    trainer_pb2.FINE_TUNE_STATE_CANCELLED,
    trainer_pb2.FINE_TUNE_STATE_INTERRUPTED,
}


class StopRequested(Exception):
    """The experiment was asked to stop; the ledger holds everything done so far."""


class PeerFailed(Exception):
    """A service kept failing past the retry budget; the experiment fails with this message."""


class Stalled(Exception):
    """A stream delivered nothing within its progress deadline (a hung generator, a trainer worker that
    stopped stepping): the call is cancelled and retried like UNAVAILABLE."""


async def within_progress_deadline(call, seconds: float, what: str):
    """The messages of the streaming `call`, each within `seconds` of the one before (or of the start);
    otherwise the call is cancelled and Stalled raised. 0 = no deadline."""
    iterator = call.__aiter__()
    while True:
        try:
            message = await (asyncio.wait_for(anext(iterator), seconds) if seconds else anext(iterator))
        except StopAsyncIteration:
            return
        except TimeoutError:
            call.cancel()
            raise Stalled(f"{what}: nothing arrived for {seconds:g} s (a stalled stream)") from None
        yield message


@dataclass(frozen=True)
class Retry:
    """Backoff for one experiment's calls: 0.2 s (0.5 s for streams) doubling to 10 s, for at most
    `budget_seconds` of failing. The budget counts from the first failure of an outage, not from the
    call's start: a stream that has delivered for an hour and then drops is retried like a fresh call,
    and an attempt that made progress (`progressed`) before failing starts a new outage."""

    budget_seconds: float
    rpc_timeout_seconds: float = 60.0
    stopped: Callable[[], bool] = lambda: False
    experiment_id: str = ""
    progress_deadline_seconds: float = PROGRESS_DEADLINE_SECONDS

    def check_stop(self) -> None:
        if self.stopped():
            raise StopRequested()

    async def __call__(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        first_delay: float = 0.2,
        progressed: Callable[[], bool] = lambda: False,
    ) -> T:
        delays = backoff_delays(first_delay)
        failing_since: float | None = None
        while True:
            self.check_stop()
            try:
                return await attempt()
            except (grpc.aio.AioRpcError, Stalled) as exc:
                code, details = (
                    ("DEADLINE_EXCEEDED", str(exc))
                    if isinstance(exc, Stalled)
                    else (exc.code().name, exc.details())
                )
                if progressed():
                    failing_since, delays = None, backoff_delays(first_delay)
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                retryable = isinstance(exc, Stalled) or exc.code() in RETRYABLE
                if not retryable or now - failing_since > self.budget_seconds:
                    raise PeerFailed(f"{what}: {code}: {details}") from None
                delay = next(delays)
                log.warning(
                    "peer_retry", experiment_id=self.experiment_id, call=what, code=code, delay_s=delay
                )
                await asyncio.sleep(delay)

    async def unary(self, what: str, method, request, timeout: float | None = None):
        return await self(what, lambda: method(request, timeout=timeout or self.rpc_timeout_seconds))


@dataclass
class Peers:
    """The connections the servicer makes once and every experiment shares."""

    generator: generator_pb2_grpc.GeneratorServiceStub
    evaluator: EvaluatorPool
    novelty: novelty_pb2_grpc.NoveltyServiceStub
    trainer: trainer_pb2_grpc.TrainerServiceStub


class GeneratorClient:
    def __init__(self, stub: generator_pb2_grpc.GeneratorServiceStub, retry: Retry) -> None:
        self.stub, self.retry = stub, retry

    async def max_candidates_per_request(self) -> int:
        described = await self.retry.unary(
            "generator.DescribeBackend", self.stub.DescribeBackend, generator_pb2.DescribeBackendRequest()
        )
        return max(1, described.max_candidates_per_request)

    async def prompt_fits(
        self, task: common_pb2.TaskSpec, mode: common_pb2.GenerationMode, codes: list[str]
    ) -> list[bool]:
        """Whether each program's edit prompt (and room for its answer) fits the generator's model."""
        request = generator_pb2.CheckPromptFitRequest(task=task, mode=mode, codes=codes)
        answer = await self.retry.unary("generator.CheckPromptFit", self.stub.CheckPromptFit, request)
        return [fit.fits for fit in answer.fits]

    async def stream(
        self,
        request: generator_pb2.GenerateCandidatesRequest,
        on_candidate: Callable[[common_pb2.Candidate], Awaitable[None]],
    ) -> None:
        """Every candidate of `request` to `on_candidate`, in order; a dropped stream is reopened at the
        next index (`request` is advanced as candidates arrive, with its parents), so none is generated
        twice."""

        left = [request.n]  # what the last failed attempt still owed

        async def attempt() -> None:
            try:
                call = self.stub.GenerateCandidates(request, timeout=STREAM_TIMEOUT_SECONDS)
                async for response in within_progress_deadline(
                    call, self.retry.progress_deadline_seconds, "generator.GenerateCandidates"
                ):
                    await on_candidate(response.candidate)
                    request.start_index = response.candidate.index + 1
                    request.n -= 1
                    if request.parents:  # one per candidate: the delivered one's goes with it
                        del request.parents[0]
                    self.retry.check_stop()
            except (grpc.aio.AioRpcError, Stalled):
                if request.n > 0:
                    raise  # a stream that failed after its last candidate has delivered everything

        def progressed() -> bool:
            delivered, left[0] = request.n < left[0], request.n
            return delivered

        await self.retry("generator.GenerateCandidates", attempt, first_delay=0.5, progressed=progressed)


class EvaluatorClient:
    def __init__(self, pool: EvaluatorPool, retry: Retry) -> None:
        self.pool, self.retry = pool, retry

    async def _some_replica(self) -> None:
        """Return once some replica has answered DescribeCapacity; PeerFailed after the retry budget."""
        pool, budget = self.pool, self.retry.budget_seconds
        if pool.capacity == 0 and not await pool.wait_capacity(budget):
            raise PeerFailed(
                f"evaluator.DescribeCapacity: UNAVAILABLE: no evaluator replica at {pool.target} answered"
                f" within {budget:g} s"
            )

    async def _call(
        self,
        stub: evaluator_pb2_grpc.EvaluatorServiceStub,
        request: evaluator_pb2.EvaluateCandidateRequest,
        timeout: float,
    ) -> evaluator_pb2.EvaluateCandidateResponse:
        try:
            return await stub.EvaluateCandidate(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRYABLE:
                self.pool.replica_failed(stub)  # re-describe it before it gets more work
            raise

    async def evaluate(
        self, request: evaluator_pb2.EvaluateCandidateRequest, timeout: float
    ) -> evaluator_pb2.EvaluationResult:
        """One evaluation on the replica with the most free slots, retried (on whichever replica is
        free then) within the retry budget."""
        pool = self.pool

        async def on_a_free_replica() -> evaluator_pb2.EvaluateCandidateResponse:
            await self._some_replica()
            async with pool.slot() as stub:
                return await self._call(stub, request, timeout)

        return (await self.retry("evaluator.EvaluateCandidate", on_a_free_replica)).result

    async def screen(
        self, request: evaluator_pb2.EvaluateCandidateRequest, timeout: float
    ) -> evaluator_pb2.EvaluationResult:
        """The static stages alone (request.static_only) on any replica, without waiting for a slot,
        retried within the retry budget."""
        pool = self.pool

        async def on_any_replica() -> evaluator_pb2.EvaluateCandidateResponse:
            await self._some_replica()
            stub = pool.any_replica()
            if stub is None:
                raise PeerFailed(f"evaluator: no evaluator replica at {pool.target} is listed")
            return await self._call(stub, request, timeout)

        return (await self.retry("evaluator.EvaluateCandidate", on_any_replica)).result


class NoveltyClient:
    def __init__(self, stub: novelty_pb2_grpc.NoveltyServiceStub, retry: Retry) -> None:
        self.stub, self.retry = stub, retry

    async def create_collection(self, name: str, near_duplicate_threshold: float) -> None:
        """Created with τ_nov, or kept as it is (a resumed run)."""
        settings = novelty_pb2.CollectionSettings(near_duplicate_threshold=near_duplicate_threshold)
        request = novelty_pb2.CreateCollectionRequest(name=name, settings=settings, exist_ok=True)
        await self.retry.unary("novelty.CreateCollection", self.stub.CreateCollection, request)

    async def import_entries(
        self, collection: str, codes: dict[str, str], structure: dict[str, list[str]] | None = None
    ) -> novelty_pb2.ImportEntriesResponse:
        """Idempotent by entry id; one client stream, not retried (a rerun imports nothing twice); an
        entry with structural tokens in `structure` joins the structural channel too."""
        structure = structure or {}
        requests = (
            novelty_pb2.ImportEntriesRequest(
                entry=novelty_pb2.AdmitEntryRequest(
                    collection=collection,
                    entry_id=entry_id,
                    code=code,
                    structural_tokens=structure.get(entry_id, []),
                )
            )
            for entry_id, code in codes.items()
        )
        return await self.stub.ImportEntries(requests, timeout=600)

    async def check(
        self,
        code: str,
        collections: list[str],
        structural_tokens: list[str] | None = None,
        among: list[str] | None = None,
    ) -> list[novelty_pb2.CollectionMatch]:
        """The nearest entry of each collection, in the order given (and its structural channel's, when
        `structural_tokens` are given); with `among`, only those entries are compared."""
        request = novelty_pb2.CheckNoveltyRequest(
            code=code, collections=collections, structural_tokens=structural_tokens or []
        )
        if among is not None:
            request.among.entry_ids.extend(among)
        return list((await self.retry.unary("novelty.CheckNovelty", self.stub.CheckNovelty, request)).matches)

    async def admit(
        self,
        collection: str,
        entry_id: str,
        code: str,
        structural_tokens: list[str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """The entry joins the collection (idempotent by id), unchecked."""
        entry = _entry(collection, entry_id, code, structural_tokens, labels)
        await self.retry.unary("novelty.AdmitEntry", self.stub.AdmitEntry, entry)

    async def check_and_admit(
        self,
        collection: str,
        entry_id: str,
        code: str,
        structural_tokens: list[str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> novelty_pb2.CheckAndAdmitResponse:
        """The entry joins the collection unless it is a near-duplicate of it (one atomic step)."""
        entry = _entry(collection, entry_id, code, structural_tokens, labels)
        request = novelty_pb2.CheckAndAdmitRequest(entry=entry, check_collections=[collection])
        return await self.retry.unary("novelty.CheckAndAdmit", self.stub.CheckAndAdmit, request)


def _entry(
    collection: str,
    entry_id: str,
    code: str,
    structural_tokens: list[str] | None,
    labels: dict[str, str] | None,
) -> novelty_pb2.AdmitEntryRequest:
    return novelty_pb2.AdmitEntryRequest(
        collection=collection,
        entry_id=entry_id,
        code=code,
        structural_tokens=structural_tokens or [],
        labels=labels or {},
    )


class TrainerClient:
    def __init__(self, stub: trainer_pb2_grpc.TrainerServiceStub, retry: Retry) -> None:
        self.stub, self.retry = stub, retry

    async def start(self, request: trainer_pb2.StartFineTuneRequest) -> trainer_pb2.FineTuneJob:
        return (await self.retry.unary("trainer.StartFineTune", self.stub.StartFineTune, request)).job

    async def run(
        self,
        request: trainer_pb2.StartFineTuneRequest,
        on_step: Callable[[trainer_pb2.FineTuneStep], None] = lambda step: None,
    ) -> trainer_pb2.FineTuneJob:
        """Start the job (idempotent by its id) and follow it to SUCCEEDED; a job the trainer reports
        INTERRUPTED (it restarted) is resumed from its checkpoint; PeerFailed if it ends otherwise."""
        job = await self.start(request)
        while True:
            job = await self.follow(job, on_step=on_step)
            if job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED:
                return job
            if job.state != trainer_pb2.FINE_TUNE_STATE_INTERRUPTED:
                state = trainer_pb2.FineTuneState.Name(job.state)
                raise PeerFailed(f"fine-tune {request.job_id} ended {state}: {job.error}")
            resume = trainer_pb2.StartFineTuneRequest()
            resume.CopyFrom(request)
            resume.resume = True
            job = await self.start(resume)

    async def follow(
        self,
        job: trainer_pb2.FineTuneJob,
        on_step: Callable[[trainer_pb2.FineTuneStep], None] = lambda step: None,
    ) -> trainer_pb2.FineTuneJob:
        """Follow the job until it is terminal, re-attaching after a dropped stream."""
        updates = [0, 0]  # received, and received before the last failure

        def progressed() -> bool:
            moved, updates[1] = updates[0] > updates[1], updates[0]
            return moved

        while job.state not in TRAINER_TERMINAL:

            async def attempt(job: trainer_pb2.FineTuneJob = job) -> trainer_pb2.FineTuneJob:
                request = trainer_pb2.WatchFineTuneRequest(job_id=job.job_id)
                call = self.stub.WatchFineTune(request, timeout=STREAM_TIMEOUT_SECONDS)
                deadline = self.retry.progress_deadline_seconds
                async for update in within_progress_deadline(call, deadline, "trainer.WatchFineTune"):
                    moved = False
                    if update.HasField("job"):
                        # the snapshot a watch starts with is no progress: a new state or step is
                        moved = (update.job.state, update.job.step) != (job.state, job.step)
                        job = update.job
                    elif update.HasField("step"):
                        moved = True
                        on_step(update.step)
                    updates[0] += moved
                    self.retry.check_stop()
                    if job.state in TRAINER_TERMINAL:
                        return job
                request = trainer_pb2.GetFineTuneRequest(job_id=job.job_id)
                got = await self.stub.GetFineTune(request, timeout=self.retry.rpc_timeout_seconds)
                return got.job

            job = await self.retry("trainer.WatchFineTune", attempt, first_delay=0.5, progressed=progressed)
        return job


class Clients:
    """The four peers bound to one experiment's retry rule."""

    def __init__(self, peers: Peers, retry: Retry) -> None:
        self.generator = GeneratorClient(peers.generator, retry)
        self.evaluator = EvaluatorClient(peers.evaluator, retry)
        self.novelty = NoveltyClient(peers.novelty, retry)
        self.trainer = TrainerClient(peers.trainer, retry)
