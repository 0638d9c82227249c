"""NATS JetStream helpers: connect, the ARCHLOOP stream, publishing `archloop.v1.Event` once.

Subjects are `archloop.events.<experiment_id>.<kind>` where kind is the Event payload field
(`cycle_evaluated`, ...). Every publish carries `Nats-Msg-Id: <event_id>`, so a re-publish after a
crash or a reconnect inside the stream's duplicate window is stored once.
"""

from __future__ import annotations

import asyncio
import re

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from archloop.errors import InvalidArgument, Unavailable
from archloop.v1 import events_pb2

log = structlog.get_logger("archloop.eventbus")

STREAM_NAME = "ARCHLOOP"
SUBJECT_PREFIX = "archloop"
STREAM_SUBJECTS = [f"{SUBJECT_PREFIX}.>"]
DUPLICATE_WINDOW_SECONDS = 24 * 3600
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


async def connect_nats(url: str, *, name: str, timeout_seconds: float = 5.0) -> NatsClient:
    """Connect, failing within `timeout_seconds` if no server answers; reconnect forever afterwards."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[u.strip() for u in url.split(",") if u.strip()],
                name=name,
                connect_timeout=max(1, int(timeout_seconds / 2)),
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout=timeout_seconds,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise Unavailable(f"cannot reach NATS at {url} within {timeout_seconds:g} s ({exc!r})") from None


async def ensure_stream(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create the ARCHLOOP stream (file storage, 24 h de-duplication window) unless it exists."""
    config = StreamConfig(
        name=STREAM_NAME,
        subjects=STREAM_SUBJECTS,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )
    try:
        await js.stream_info(STREAM_NAME)
    except NotFoundError:
        await js.add_stream(config)
        log.info("nats_stream_created", stream=STREAM_NAME, subjects=STREAM_SUBJECTS)


def event_kind(event: events_pb2.Event) -> str:
    kind = event.WhichOneof("payload")
    if kind is None:
        raise InvalidArgument("payload", "the event carries no payload")
    return kind


def event_subject(event: events_pb2.Event) -> str:
    """archloop.events.<experiment_id>.<kind>; the id must be a single NATS subject token."""
    if not _TOKEN.match(event.experiment_id):
        raise InvalidArgument(
            "experiment_id", f"{event.experiment_id!r} must be 1-128 letters, digits, '-' or '_'"
        )
    return f"{SUBJECT_PREFIX}.events.{event.experiment_id}.{event_kind(event)}"


async def publish_event(
    js: JetStreamContext, event: events_pb2.Event, *, timeout_seconds: float = 5.0
) -> PubAck:
    """Publish once: the JetStream message id is event.event_id, so repeats are dropped by the server."""
    if not event.event_id:
        raise InvalidArgument("event_id", "is required for de-duplication")
    subject = event_subject(event)
    ack = await js.publish(
        subject,
        event.SerializeToString(),
        timeout=timeout_seconds,
        stream=STREAM_NAME,
        headers={"Nats-Msg-Id": event.event_id},
    )
    log.debug("event_published", subject=subject, event_id=event.event_id, duplicate=ack.duplicate)
    return ack
