"""The one retry rule of the controller's peer calls (services.controller.peers.Retry)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.controller.peers import PeerFailed, Retry


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
