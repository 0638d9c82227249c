"""Cycle events on NATS JetStream: the controller's connection and the ARCHLOOP stream."""

from __future__ import annotations

import asyncio
import contextlib

import nats
from nats.aio.client import Client as NatsClient

from archloop.errors import Unavailable
from archloop.eventbus import connect_nats, ensure_stream, publish_event
from archloop.settings import SettingsError
from archloop.v1 import events_pb2


class EventPublisher:
    """Connects at start (failing fast on an unreachable URL) and publishes `Event`s once each."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self._client: NatsClient | None = None

    async def connect(self) -> None:
        try:
            self._client = await connect_nats(self.nats_url, name="archloop-controller")
        except Unavailable as exc:
            raise SettingsError(f"--nats-url/ARCHLOOP_NATS_URL: {exc}") from None
        await ensure_stream(self._client.jetstream())

    async def publish(self, event: events_pb2.Event) -> None:
        if self._client is None:
            raise Unavailable("NATS is not connected")
        await publish_event(self._client.jetstream(), event)

    async def close(self, timeout_seconds: float = 2.0) -> None:
        """Flush what is pending; if NATS is gone (or goes while draining), give up after the timeout
        rather than hold the shutdown."""
        if self._client is None or self._client.is_closed:
            return
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            if self._client.is_connected:
                await asyncio.wait_for(self._client.drain(), timeout_seconds)
            if not self._client.is_closed:
                await asyncio.wait_for(self._client.close(), timeout_seconds)
