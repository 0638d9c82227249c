"""The evaluator replicas the controller dispatches to, found by name and re-found as they scale.

`--evaluator-addr` is either one address (`host:port`: one replica) or `dns:///name:port`, the
headless Service of a scaled Deployment: its DNS name resolves to one address per ready pod. The
pool resolves the name every `refresh_seconds` (and at once after a replica fails), opens a channel
per address, asks each new replica for its capacity (DescribeCapacity) and dispatches every
evaluation to the replica with the most free slots. So `kubectl scale deployment/evaluator
--replicas=N` needs nothing else: new pods become ready, appear in DNS and take work at the next
refresh; removed pods leave DNS and get no new work (their running evaluations finish or fail, and
a failed one is retried elsewhere by the caller).

The total in flight is the sum of the replicas' capacities, optionally capped by `limit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import structlog

from archloop.clients import aio_channel
from archloop.v1 import evaluator_pb2, evaluator_pb2_grpc

log = structlog.get_logger("archloop.controller.evaluators")

Resolver = Callable[[str, int], list[str]]


def resolve_dns(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as sorted `ip:port` targets ([v6]:port for IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    targets = {f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos}
    return sorted(targets)


def parse_target(target: str) -> tuple[str, int, bool]:
    """(host, port, resolved by name) of `host:port` or `dns:///host:port`; ValueError if malformed."""
    dynamic = target.startswith("dns:///")
    rest = target.removeprefix("dns:///")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"evaluator address {target!r} is not host:port or dns:///host:port")
    return host.strip("[]"), int(port), dynamic


@dataclass
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: evaluator_pb2_grpc.EvaluatorServiceStub
    capacity: int = 0  # 0 until DescribeCapacity answered
    in_flight: int = 0
    replica_id: str = ""
    listed: bool = True  # still in the latest resolution

    @property
    def free(self) -> int:
        return self.capacity - self.in_flight if self.listed else 0


class EvaluatorPool:
    """Replicas behind one evaluator address; `async with pool.slot() as stub:` runs one evaluation."""

    def __init__(
        self,
        target: str,
        *,
        resolver: Resolver = resolve_dns,
        refresh_seconds: float = 10.0,
        limit: int = 0,
        describe_timeout_seconds: float = 5.0,
    ) -> None:
        self.target = target
        self.host, self.port, self.dynamic = parse_target(target)
        self.resolver = resolver
        self.refresh_seconds = refresh_seconds
        self.limit = limit
        self.describe_timeout_seconds = describe_timeout_seconds
        self.replicas: dict[str, Replica] = {}
        self._changed = asyncio.Condition()
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

    # -- what the controller sees ----------------------------------------------------------------
    @property
    def capacity(self) -> int:
        total = sum(r.capacity for r in self.replicas.values() if r.listed)
        return min(total, self.limit) if self.limit else total

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas.values())

    def describe(self) -> list[dict]:
        """The replicas as the pool knows them (for logs and tests)."""
        return [
            dict(target=r.target, replica_id=r.replica_id, capacity=r.capacity, in_flight=r.in_flight)
            for r in sorted(self.replicas.values(), key=lambda r: r.target)
            if r.listed
        ]

    # -- resolution ------------------------------------------------------------------------------
    def _add(self, target: str) -> Replica:
        channel = aio_channel(target)
        replica = Replica(target, channel, evaluator_pb2_grpc.EvaluatorServiceStub(channel))
        self.replicas[target] = replica
        return replica

    async def refresh(self) -> None:
        """Resolve the name, add new replicas, unlist gone ones, (re)describe those without capacity."""
        async with self._refresh_lock:
            if self.dynamic:
                targets = await asyncio.to_thread(self.resolver, self.host, self.port)
            else:
                targets = [f"{self.host}:{self.port}"]
            for target in targets:
                if target not in self.replicas:
                    self._add(target)
                    log.info("evaluator_replica_found", target=target, name=self.target)
                self.replicas[target].listed = True
            for target, replica in list(self.replicas.items()):
                if target not in targets:
                    if replica.listed:
                        log.info("evaluator_replica_gone", target=target, name=self.target)
                    replica.listed = False
                    if replica.in_flight == 0:
                        del self.replicas[target]
                        await replica.channel.close()
            await asyncio.gather(*(self._describe(r) for r in self.replicas.values() if r.listed))
            self._refreshed_at = time.monotonic()
        async with self._changed:
            self._changed.notify_all()

    async def _describe(self, replica: Replica) -> None:
        try:
            answer = await replica.stub.DescribeCapacity(
                evaluator_pb2.DescribeCapacityRequest(), timeout=self.describe_timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            if replica.capacity:
                log.warning("evaluator_replica_unreachable", target=replica.target, code=exc.code().name)
            replica.capacity = 0
            return
        replica.capacity = max(1, answer.max_concurrent_evaluations)
        replica.replica_id = answer.replica

    async def _keep_resolving(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # a resolver failure must not end the refresh loop
                log.warning("evaluator_refresh_failed", error=str(exc))

    async def start(self) -> None:
        """Resolve once and keep resolving in the background (idempotent; concurrent callers wait in
        `slot` until the first resolution is in)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_resolving())
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._pending):
            task.cancel()
        for replica in self.replicas.values():
            await replica.channel.close()
        self.replicas.clear()

    async def wait_capacity(self, timeout: float) -> int:
        """The total capacity once at least one replica has answered (0 if none did within timeout)."""
        deadline = time.monotonic() + timeout
        await self.start()
        while self.capacity == 0 and time.monotonic() < deadline:
            await asyncio.sleep(min(1.0, self.refresh_seconds))
            await self.refresh()
        return self.capacity

    def replica_failed(self, stub: evaluator_pb2_grpc.EvaluatorServiceStub) -> None:
        """A call on this replica failed with UNAVAILABLE / RESOURCE_EXHAUSTED: re-describe it soon."""
        for replica in self.replicas.values():
            if replica.stub is stub:
                replica.capacity = 0
        if self._task is not None:
            task = asyncio.get_running_loop().create_task(self.refresh())
            self._pending.add(task)  # a reference, so the task is not collected before it runs
            task.add_done_callback(self._pending.discard)

    # -- dispatch --------------------------------------------------------------------------------
    def _pick(self) -> Replica | None:
        if self.limit and self.in_flight >= self.limit:
            return None
        free = [r for r in self.replicas.values() if r.free > 0]
        if not free:
            return None
        return max(free, key=lambda r: (r.free, -r.in_flight, r.target))

    def any_replica(self) -> evaluator_pb2_grpc.EvaluatorServiceStub | None:
        """A listed replica that answered, the one with the most free slots first, for a call that
        takes no slot (a static-only screen); None before any answered."""
        listed = [r for r in self.replicas.values() if r.listed and r.capacity]
        if not listed:
            return None
        return max(listed, key=lambda r: (r.free, r.target)).stub

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[evaluator_pb2_grpc.EvaluatorServiceStub]:
        """Wait for a free slot on some replica; hold it for one evaluation."""
        await self.start()
        async with self._changed:
            while (replica := self._pick()) is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=self.refresh_seconds)
                if self.capacity == 0 and time.monotonic() - self._refreshed_at > 1.0:
                    # nobody answered yet: look again now rather than a whole period later
                    self._changed.release()
                    try:
                        await self.refresh()
                    finally:
                        await self._changed.acquire()
            replica.in_flight += 1
        try:
            yield replica.stub
        finally:
            replica.in_flight -= 1
            if not replica.listed and replica.in_flight == 0:
                self.replicas.pop(replica.target, None)
                await replica.channel.close()
            async with self._changed:
                self._changed.notify_all()
