"""The shared server bootstrap in-process: readiness gating and the error-mapping interceptor.

The servicer here is a test double of a *servicer implementation* (it raises on purpose), used to
exercise archloop.server; no ArchLoop service is replaced by it.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archloop.clients import aio_channel
from archloop.errors import InvalidArgument, NotFound
from archloop.server import GrpcService, ServicerBase
from archloop.settings import ServiceSettings
from archloop.v1 import novelty_pb2, novelty_pb2_grpc

SERVICE = "archloop.v1.NoveltyService"


class RaisingNoveltyServicer(ServicerBase, novelty_pb2_grpc.NoveltyServiceServicer):
    """Answers a few RPCs with the failures the RPC wrapper must map; start() waits for a signal."""

    service_name = SERVICE
    add_to_server = staticmethod(novelty_pb2_grpc.add_NoveltyServiceServicer_to_server)

    def __init__(self) -> None:
        self.release_start = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        await self.release_start.wait()

    async def stop(self) -> None:
        self.stopped = True

    async def CheckNovelty(self, request, context):
        if not request.code:
            raise InvalidArgument("code", "must not be empty")
        raise ValueError("secret internals")

    async def GetEntry(self, request, context):
        raise NotFound(f"collection {request.collection!r} does not exist")

    async def StreamCheckNovelty(self, request_iterator, context):
        async for item in request_iterator:
            yield novelty_pb2.StreamCheckNoveltyResponse(request_id=item.request_id)
        raise InvalidArgument("check.code", "stream ended badly")


async def _health(stub: health_pb2_grpc.HealthStub) -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    return response.status


@pytest.fixture
async def running():
    servicer = RaisingNoveltyServicer()
    service = GrpcService(ServiceSettings(port=0, grace_period_seconds=1), servicer)
    address = service.bind()
    task = asyncio.create_task(service.run())
    channel = aio_channel(address)
    yield servicer, service, channel, task
    await channel.close()
    if not task.done():
        await service.shutdown()
        task.cancel()


async def test_not_serving_until_start_finishes(running) -> None:
    servicer, _service, channel, _task = running
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(50):
        try:
            status = await _health(stub)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    # an RPC that arrives meanwhile (a client of a restarted service) meets UNAVAILABLE, which clients
    # retry, never a half-built servicer
    async with grpc.aio.insecure_channel(_service.address) as plain:  # no automatic retries
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await novelty_pb2_grpc.NoveltyServiceStub(plain).GetEntry(
                novelty_pb2.GetEntryRequest(), timeout=5
            )
    assert early.value.code() == grpc.StatusCode.UNAVAILABLE
    assert early.value.details() == f"{SERVICE} is still starting (health NOT_SERVING); retry"
    servicer.release_start.set()
    for _ in range(100):
        if await _health(stub) == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.02)
    assert await _health(stub) == health_pb2.HealthCheckResponse.SERVING


async def test_domain_errors_map_to_status_codes(running) -> None:
    servicer, _service, channel, _task = running
    servicer.release_start.set()
    stub = novelty_pb2_grpc.NoveltyServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckNovelty(novelty_pb2.CheckNoveltyRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "code: must not be empty"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CheckNovelty(novelty_pb2.CheckNoveltyRequest(code="x = 1"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in info.value.details()  # internals stay in the log

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetEntry(novelty_pb2.GetEntryRequest(collection="nope"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetStats(novelty_pb2.GetStatsRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_streaming_errors_after_messages(running) -> None:
    servicer, _service, channel, _task = running
    servicer.release_start.set()
    stub = novelty_pb2_grpc.NoveltyServiceStub(channel)
    requests = [novelty_pb2.StreamCheckNoveltyRequest(request_id=str(i)) for i in range(3)]
    call = stub.StreamCheckNovelty(iter(requests), timeout=5)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in call:
            received.append(response.request_id)
    assert received == ["0", "1", "2"]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_shutdown_sets_not_serving_and_stops_servicer(running) -> None:
    servicer, service, _channel, task = running
    servicer.release_start.set()
    await asyncio.sleep(0.2)
    assert await service.shutdown() == 0
    assert servicer.stopped
    task.cancel()


async def test_a_hanging_stop_does_not_hold_the_exit() -> None:
    class HangingStop(RaisingNoveltyServicer):
        async def stop(self) -> None:
            await asyncio.Event().wait()

    service = GrpcService(ServiceSettings(port=0, grace_period_seconds=0.5), HangingStop())
    service.bind()
    await service.server.start()
    started = asyncio.get_running_loop().time()
    assert await service.shutdown() == 1
    assert asyncio.get_running_loop().time() - started < 10
