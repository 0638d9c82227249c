"""Client-side gRPC helpers shared by the services, the CLI and the tests.

Channels to a scaled service use a `dns:///host:port` target with the round_robin policy, so every
replica behind a headless Service gets calls; servers close connections after a max age, so new
replicas are found. Calls always carry a deadline. Only UNAVAILABLE is retried automatically (the
request never reached a servicer); RESOURCE_EXHAUSTED is left to the caller, who can pick another
replica or back off.
"""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, object]]:
    return [
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.dns_min_time_between_resolutions_ms", 5_000),
    ]


def aio_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    """An asyncio channel to `target` (host:port or dns:///host:port) with the shared options."""
    return grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))


def health_status(target: str, service: str, timeout_seconds: float = 2.0) -> str:
    """The standard health check, answered as SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
