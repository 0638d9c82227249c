"""What the dashboard's app (tools.dashboard.app) and its pages (tools.dashboard.routes) share: the
settings, the gRPC-to-HTTP status tables, the controller-down error, and the NATS follower of an
experiment's events."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from archloop.clients import ChannelSecurity
from archloop.enums import short_name
from archloop.v1 import controller_pb2, events_pb2
from services.controller import stats

RPC_TIMEOUT_SECONDS = 10.0
CLOSING_POLL_SECONDS = 1.0  # how often a live-update stream looks whether the server is stopping
COOKIE = "archloop_dashboard"
OPEN_PATHS = {"/login", "/healthz"}  # what answers without the token
REFUSED = {  # a gRPC refusal as an HTTP status (anything else the controller answers: 502)
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAUTHENTICATED: 502,
}
DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class Settings:
    controller: str  # host:port of the controller
    nats_url: str = ""  # live updates from NATS JetStream ("" = the page polls instead)
    novelty: str = ""  # the novelty service, for a candidate's nearest corpus program ("" = its id only)
    auth_token_file: str = ""  # the bearer token a visitor must show ("" = none: loopback use)
    peers: ChannelSecurity = field(default_factory=ChannelSecurity)  # TLS / token towards the services


class ControllerDown(Exception):
    def __init__(self, address: str, code: str) -> None:
        super().__init__(f"{address}: {code}")
        self.address, self.code = address, code


def local_path(target: str) -> str:
    """`target` if it is a path on this site, else "/" (no open redirect to another host)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def state_names(e: controller_pb2.Experiment) -> dict[str, str]:
    return {
        "state": short_name(controller_pb2.ExperimentState, e.state),
        "phase": short_name(controller_pb2.CyclePhase, e.current_phase),
    }


async def follow(nats_url: str, experiment_id: str, closing: threading.Event) -> AsyncIterator[dict]:
    """The experiment's new cycle events from NATS JetStream, as server-sent events, until `closing` is
    set (the server stops): then the subscription and the connection are closed before the stream
    ends, so no NATS task is left pending when the process exits."""
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import DeliverPolicy

    from archloop.eventbus import SUBJECT_PREFIX, connect_nats

    subscription = None
    client = await connect_nats(nats_url, name="archloop-dashboard")
    try:
        subject = f"{SUBJECT_PREFIX}.events.{experiment_id}.>"
        subscription = await client.jetstream().subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        yield {"event": "ready", "data": "{}"}
        while not closing.is_set():
            try:
                message = await subscription.next_msg(timeout=CLOSING_POLL_SECONDS)
            except NatsTimeout:
                continue
            event = events_pb2.Event.FromString(message.data)
            kind = event.WhichOneof("payload") or ""
            payload = {
                field.name: value for field, value in getattr(event, kind).ListFields()
            }  # flat scalars
            data = stats.finite({"kind": kind, "cycle": event.cycle, **payload})
            yield {"event": "cycle", "data": json.dumps(data)}
    finally:
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await client.close()
