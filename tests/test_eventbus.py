"""Events through a real nats-server with JetStream: stored once per event id, delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import ConsumerConfig, DeliverPolicy

from archloop.errors import InvalidArgument
from archloop.eventbus import STREAM_NAME, connect_nats, ensure_stream, event_subject, publish_event
from archloop.v1 import events_pb2


def _event(experiment_id: str, sequence: int) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=f"{experiment_id}/{sequence}",
        experiment_id=experiment_id,
        cycle=1,
        sequence=sequence,
        occurred_at=Timestamp(seconds=1_700_000_000),
        cycle_evaluated=events_pb2.CycleEvaluated(
            candidates_evaluated=4, candidates_valid=3, best_accuracy=0.5
        ),
    )


async def test_publish_twice_with_same_id_is_stored_and_delivered_once(nats_server) -> None:
    experiment = "exp-" + uuid.uuid4().hex[:8]
    client = await connect_nats(nats_server.url, name="test")
    try:
        js = client.jetstream()
        await ensure_stream(js)
        await ensure_stream(js)  # idempotent
        first = await publish_event(js, _event(experiment, 1))
        again = await publish_event(js, _event(experiment, 1))
        assert not first.duplicate
        assert again.duplicate
        await publish_event(js, _event(experiment, 2))

        subject = f"archloop.events.{experiment}.>"
        consumer = await js.pull_subscribe(
            subject,
            durable=f"test-{experiment}",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        messages = await consumer.fetch(10, timeout=2)
        decoded = [events_pb2.Event.FromString(m.data) for m in messages]
        for message in messages:
            await message.ack()
        assert [e.sequence for e in decoded] == [1, 2]
        assert decoded[0].cycle_evaluated.candidates_valid == 3
        assert messages[0].subject == f"archloop.events.{experiment}.cycle_evaluated"
        with pytest.raises(nats.errors.TimeoutError):
            await consumer.fetch(1, timeout=0.5)
        await consumer.unsubscribe()
    finally:
        await client.drain()


def test_subject_rejects_ids_that_are_not_one_token() -> None:
    with pytest.raises(InvalidArgument, match="experiment_id"):
        event_subject(_event("bad.id", 1))
    with pytest.raises(InvalidArgument, match="payload"):
        event_subject(events_pb2.Event(event_id="x/1", experiment_id="x"))


async def test_controller_creates_the_stream(nats_server, start_service) -> None:
    client = await connect_nats(nats_server.url, name="test")
    try:
        js = client.jetstream()
        # another test may have created it; the controller must (re)create it after a delete
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(STREAM_NAME)
        await asyncio.to_thread(start_service, "controller", "--nats-url", nats_server.url)
        info = await js.stream_info(STREAM_NAME)
        assert info.config.subjects == ["archloop.>"]
        assert info.config.duplicate_window == 24 * 3600
    finally:
        await client.drain()


async def test_unreachable_server_raises_unavailable() -> None:
    from archloop.errors import Unavailable

    with pytest.raises(Unavailable, match="cannot reach NATS"):
        await connect_nats("nats://127.0.0.1:1", name="test", timeout_seconds=1.5)
