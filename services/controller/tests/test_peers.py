"""The one retry rule of the controller's peer calls (services.controller.peers.Retry)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from archloop.v1 import common_pb2, generator_pb2, trainer_pb2
from services.controller.peers import GeneratorClient, PeerFailed, Retry, TrainerClient


class _Call:
    """What a fake stub's streaming method returns: the stream, and `cancel()` as a gRPC call has."""

    def __init__(self, stream) -> None:
        self.stream, self.cancelled = stream, False

    def __aiter__(self):
        return self.stream.__aiter__()

    def cancel(self) -> None:
        self.cancelled = True


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "peer went away"
    )


async def test_a_call_that_keeps_failing_gives_up_after_its_budget_naming_the_call() -> None:
    attempts = 0

    async def always_down() -> None:
        nonlocal attempts
        attempts += 1
        raise _unavailable()

    with pytest.raises(PeerFailed, match=r"novelty\.CheckNovelty: UNAVAILABLE: peer went away"):
        await Retry(budget_seconds=0.5)("novelty.CheckNovelty", always_down)
    assert attempts >= 3  # 0.2 + 0.4 s of backoff fit the budget


async def test_an_error_that_is_not_transient_is_not_retried() -> None:
    attempts = 0

    async def refused() -> None:
        nonlocal attempts
        attempts += 1
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "n"
        )

    with pytest.raises(PeerFailed, match="INVALID_ARGUMENT"):
        await Retry(budget_seconds=60)("generator.GenerateCandidates", refused)
    assert attempts == 1


async def test_the_budget_counts_from_the_outage_not_from_the_start_of_a_long_stream() -> None:
    """A stream that delivered for longer than the budget and then dropped is reopened (the run of
    2026-11-30 09:16 failed here: a 14-minute generation stream dropped once and was given up on)."""
    delivered, attempts = [], 0

    async def long_stream() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(0.6)  # delivering, for longer than the whole budget
            delivered.append("c0")
            raise _unavailable()
        delivered.append("c1")

    def progressed() -> bool:
        return attempts == 1

    await Retry(budget_seconds=0.3)("generator.GenerateCandidates", long_stream, progressed=progressed)
    assert delivered == ["c0", "c1"] and attempts == 2


class _DroppingGenerator:
    """Test double of the generator stub: the first stream delivers one candidate and drops (or, with
    `stall`, goes silent without ending: a deadlocked generator); later streams deliver the rest. It
    records each request as it was sent."""

    def __init__(self, stall: bool = False) -> None:
        self.requests: list[generator_pb2.GenerateCandidatesRequest] = []
        self.stall = stall

    def GenerateCandidates(self, request, timeout=None):
        sent = generator_pb2.GenerateCandidatesRequest()
        sent.CopyFrom(request)
        self.requests.append(sent)

        async def stream():
            for k in range(sent.n):
                index = sent.start_index + k
                parent = sent.parents[k].parent_id if sent.parents else ""
                yield generator_pb2.GenerateCandidatesResponse(
                    candidate=common_pb2.Candidate(index=index, candidate_id=parent)
                )
                if len(self.requests) == 1:
                    if self.stall:
                        await asyncio.sleep(3600)
                    raise _unavailable()

        return _Call(stream())


async def test_a_reopened_stream_asks_for_the_rest_with_their_own_parents() -> None:
    stub = _DroppingGenerator()
    parents = [generator_pb2.ParentProgram(parent_id=f"p{i}", code="x") for i in range(3)]
    request = generator_pb2.GenerateCandidatesRequest(n=3, start_index=5, parents=parents)
    got: list[common_pb2.Candidate] = []

    async def record(candidate: common_pb2.Candidate) -> None:
        got.append(candidate)

    await GeneratorClient(stub, Retry(budget_seconds=30)).stream(request, record)
    assert [(c.index, c.candidate_id) for c in got] == [(5, "p0"), (6, "p1"), (7, "p2")]
    again = stub.requests[1]
    assert (again.start_index, again.n, [p.parent_id for p in again.parents]) == (6, 2, ["p1", "p2"])


async def test_a_stream_that_goes_silent_is_cancelled_at_its_progress_deadline_and_asked_again() -> None:
    stub = _DroppingGenerator(stall=True)
    request = generator_pb2.GenerateCandidatesRequest(n=3, start_index=0)
    got: list[int] = []

    async def record(candidate: common_pb2.Candidate) -> None:
        got.append(candidate.index)

    retry = Retry(budget_seconds=30, progress_deadline_seconds=0.3)
    await asyncio.wait_for(GeneratorClient(stub, retry).stream(request, record), 10)
    assert got == [0, 1, 2] and [(r.start_index, r.n) for r in stub.requests] == [(0, 3), (1, 2)]


class _StuckTrainer:
    """Test double of the trainer stub whose job never steps again: every watch sends the job once, then
    nothing (a worker that stopped stepping)."""

    def __init__(self) -> None:
        self.watches = 0

    def WatchFineTune(self, request, timeout=None):
        self.watches += 1

        async def stream():
            yield trainer_pb2.WatchFineTuneResponse(
                job=trainer_pb2.FineTuneJob(job_id=request.job_id, state=trainer_pb2.FINE_TUNE_STATE_RUNNING)
            )
            await asyncio.sleep(3600)

        return _Call(stream())


async def test_a_fine_tune_that_stops_stepping_fails_the_call_naming_the_stall() -> None:
    stub = _StuckTrainer()
    job = trainer_pb2.FineTuneJob(job_id="j1", state=trainer_pb2.FINE_TUNE_STATE_RUNNING)
    retry = Retry(budget_seconds=0.5, progress_deadline_seconds=0.3)
    with pytest.raises(
        PeerFailed, match=r"trainer\.WatchFineTune: DEADLINE_EXCEEDED: .*nothing arrived for 0\.3 s"
    ):
        await asyncio.wait_for(TrainerClient(stub, retry).follow(job), 20)
    assert stub.watches >= 2  # re-asked before giving up
