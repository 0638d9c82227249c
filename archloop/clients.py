"""Client-side gRPC helpers shared by the services, the CLI and the tests.

Channels to a scaled service use a `dns:///host:port` target with the round_robin policy, so every
replica behind a headless Service gets calls; servers close connections after a max age, so new
replicas are found. Calls always carry a deadline. Only UNAVAILABLE is retried automatically (the
request never reached a servicer); RESOURCE_EXHAUSTED is left to the caller, who can pick another
replica or back off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEEPALIVE_TIME_MS = 30_000
"""A client pings a quiet connection this often (servers must accept it: archloop.server)."""

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


def backoff_delays(first: float, maximum: float = 10.0) -> Iterator[float]:
    """The waits between a caller's own retries: `first`, doubling, capped at `maximum` (the one
    backoff rule of the controller's peer calls and its event outbox)."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, maximum)


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, object]]:
    return [
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.dns_min_time_between_resolutions_ms", 5_000),
    ]


def read_token_file(path: str) -> str:
    """The bearer token in `path`, surrounding whitespace dropped; ValueError if unreadable or empty.
    Servers (archloop.server) and clients read token files alike."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the token file {path} ({exc.strerror})") from None
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


@dataclass(frozen=True)
class ChannelSecurity:
    """How to reach a service that serves TLS and/or wants a bearer token (archloop.server)."""

    tls_ca_file: str = ""  # PEM CA that signed the server's certificate; "" = plaintext
    token_file: str = ""  # a file holding the bearer token; "" = none

    def token(self) -> str:
        return read_token_file(self.token_file) if self.token_file else ""

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials carrying the token, or None for a plaintext channel."""
        if not self.tls_ca_file:
            return None
        try:
            ca = Path(self.tls_ca_file).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the CA file {self.tls_ca_file} ({exc.strerror})") from None
        tls = grpc.ssl_channel_credentials(root_certificates=ca)
        token = self.token()
        return (
            grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
            if token
            else tls
        )


class _TokenMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # fmt: skip
    """Adds `authorization: Bearer <token>` on a plaintext channel (gRPC sends call credentials
    only over TLS; a token in clear text is for loopback and private networks)."""

    def __init__(self, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details):
        return details._replace(metadata=tuple(details.metadata or ()) + self.metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


class _AioTokenMetadata(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self.metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self.metadata)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)


def aio_channel(
    target: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    security: ChannelSecurity | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `target` (host:port or dns:///host:port) with the shared options."""
    options = channel_options(max_message_bytes)
    security = security or ChannelSecurity()
    credentials = security.credentials()
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options)
    token = security.token()
    interceptors = [_AioTokenMetadata(token)] if token else None
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def sync_channel(target: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """A blocking channel with the shared options (TLS and token as `security` says)."""
    security = security or ChannelSecurity()
    credentials = security.credentials()
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=channel_options())
    channel = grpc.insecure_channel(target, options=channel_options())
    token = security.token()
    return grpc.intercept_channel(channel, _TokenMetadata(token)) if token else channel


def health_status(target: str, service: str, timeout_seconds: float = 2.0) -> str:
    """The standard health check, answered as SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
