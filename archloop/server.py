"""The gRPC server bootstrap every ArchLoop service runs.

Life of a service process:
1. bind the port (a bad or busy port exits 2 with one line naming the setting);
2. start serving with health NOT_SERVING for the named service, reflection on;
3. `servicer.start()` does the slow work (load a model, rebuild an index);
4. health SERVING, ready file written; from then on health follows `servicer.live()` (checked every
   LIVENESS_SECONDS: the evaluator is not live while its sandbox template is down);
5. SIGTERM/SIGINT: health NOT_SERVING, stop accepting, in-flight RPCs get the grace period,
   `servicer.stop()` releases resources (drains NATS), exit 0.

One wrapper around every RPC handler (`register_wrapped`) maps domain exceptions (archloop.errors) to
status codes and logs one summary line per RPC; anything unexpected is INTERNAL with the traceback
in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from archloop.clients import read_token_file
from archloop.errors import ArchLoopError, InvalidArgument, Unavailable
from archloop.processes import die_with_parent
from archloop.settings import EXIT_BAD_CONFIG, ServiceSettings, SettingsError, flag_name, redacted

log = structlog.get_logger("archloop.server")

EXIT_OK = 0
EXIT_FAILED = 1
LIVENESS_SECONDS = 2.0  # how often a serving service asks itself `live()` (ServicerBase.live)


class ServicerBase:
    """Lifecycle hooks and registration for a service implementation.

    Subclasses also inherit the generated `XxxServiceServicer`, whose methods answer UNIMPLEMENTED
    until a real implementation overrides them.
    """

    service_name: ClassVar[str]
    """Full proto name, e.g. archloop.v1.NoveltyService; also the health-check service name."""

    add_to_server: ClassVar[Any]
    """The generated add_XxxServiceServicer_to_server(servicer, server), as a staticmethod."""

    serving: bool = False
    """Set once start() has finished; until then every RPC answers UNAVAILABLE (clients retry), so a
    request that reaches a restarted service still loading its model never meets a half-built servicer."""

    async def start(self) -> None:
        """Work to finish before the service reports SERVING."""

    async def stop(self) -> None:
        """Release resources after the server stopped accepting RPCs."""

    def live(self) -> bool:
        """Whether the service can do its work now (checked every LIVENESS_SECONDS once serving; the
        health status follows it, so a probe or the local supervisor sees a broken part). A service
        whose work depends on a helper process says here whether that process answers."""
        return True


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ArchLoopError):
        return grpc.StatusCode[exc.status], str(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, "not implemented yet"
    return grpc.StatusCode.INTERNAL, "internal error (a bug); the service log has the traceback"


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - an async generator that never yields

    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, *args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, *args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, *args)
    return grpc.stream_stream_rpc_method_handler(stream, *args)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but the health check (kubelet probes send no metadata) needs
    `authorization: Bearer <token>`; the comparison takes constant time."""

    OPEN = ("/grpc.health.v1.Health/",)

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self.OPEN):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return handler
        log.warning("rpc_unauthenticated", rpc=handler_call_details.method.rsplit("/", 1)[-1])
        return _deny(handler, "authorization: a valid 'Bearer <token>' is required")


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{what}: cannot read {path} ({exc.strerror})") from None


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext; SettingsError when half-configured."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        if settings.tls_client_ca_file:
            raise SettingsError("--tls-client-ca-file/ARCHLOOP_TLS_CLIENT_CA_FILE: needs --tls-cert-file")
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise SettingsError(
            "--tls-cert-file/--tls-key-file: give both (certificate and private key) or neither"
        )
    chain = _read_pem(settings.tls_cert_file, "--tls-cert-file/ARCHLOOP_TLS_CERT_FILE")
    key = _read_pem(settings.tls_key_file, "--tls-key-file/ARCHLOOP_TLS_KEY_FILE")
    client_ca = (
        _read_pem(settings.tls_client_ca_file, "--tls-client-ca-file/ARCHLOOP_TLS_CLIENT_CA_FILE")
        if settings.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class _HandlerCollector:
    """Stands in for the server while a generated `add_XxxServicer_to_server` runs, keeping the
    method handlers it registers so they can be wrapped before the real server sees them."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generic form of the same handlers; add_registered_method_handlers carries them."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, handlers


def register_wrapped(
    add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server
) -> None:
    """Register the servicer with every method handler wrapped by `_wrapped`: exceptions mapped to
    status codes, one `rpc_finished` line per call.

    The wrapping happens once, here, rather than in a grpc.aio ServerInterceptor, which runs its
    coroutine chain and builds new handler objects on every call: a novelty check is under 2 ms end
    to end, and every RPC pays the interceptor path. Health and reflection are registered unwrapped.
    """
    collected = _HandlerCollector()
    add_to_server(servicer, collected)
    assert collected.handlers, "the generated code registers its handlers by service name"
    handlers = {name: _wrapped(name, handler, servicer) for name, handler in collected.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(collected.service, handlers),))
    server.add_registered_method_handlers(collected.service, handlers)


def _wrapped(rpc: str, handler: grpc.RpcMethodHandler, servicer: Any) -> grpc.RpcMethodHandler:
    deserializer = _tolerant(handler.request_deserializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _unary(rpc, _started(servicer, _checked_request(handler.unary_unary))),
            deserializer,
            handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _stream(rpc, _started(servicer, _checked_request(handler.unary_stream))),
            deserializer,
            handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _unary(rpc, _started(servicer, _checked_stream(handler.stream_unary))),
            deserializer,
            handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        _stream(rpc, _started(servicer, _checked_stream(handler.stream_stream))),
        deserializer,
        handler.response_serializer,
    )


def _started(servicer: Any, behavior: Callable) -> Callable:
    def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not servicer.serving:
            raise Unavailable(f"{servicer.service_name} is still starting (health NOT_SERVING); retry")
        return behavior(request, context)

    return call


def _unary(rpc: str, behavior: Callable) -> Callable:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(rpc=rpc):
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                await _abort(context, rpc, exc, started)
            _log_finished(rpc, context, started)
            return result

    return call


def _stream(rpc: str, behavior: Callable) -> Callable:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(rpc=rpc):
            try:
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    for item in result:
                        yield item
            except Exception as exc:
                await _abort(context, rpc, exc, started)
            _log_finished(rpc, context, started)

    return call


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so it can become INVALID_ARGUMENT."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(exc)

    return parse


def _invalid(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            "request", f"is not a valid message (e.g. invalid UTF-8 in a string): {request.error}"
        )


def _checked_request(behavior: Callable) -> Callable:
    def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _invalid(request)
        return behavior(request, context)

    return call


def _checked_stream(behavior: Callable) -> Callable:
    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            _invalid(request)
            yield request

    def call(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return behavior(checked(request_iterator), context)

    return call


async def _abort(context: grpc.aio.ServicerContext, rpc: str, exc: Exception, started: float) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    code, message = _status_for(exc)
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if code is grpc.StatusCode.INTERNAL:
        log.error("rpc_failed", rpc=rpc, code=code.name, duration_ms=duration_ms, exc_info=exc)
    else:
        log.info("rpc_finished", rpc=rpc, code=code.name, duration_ms=duration_ms, detail=message)
    await context.abort(code, message)


def _log_finished(rpc: str, context: grpc.aio.ServicerContext, started: float) -> None:
    code = context.code() or grpc.StatusCode.OK
    log.info(
        "rpc_finished",
        rpc=rpc,
        code=getattr(code, "name", str(code)),
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )


MIN_PING_INTERVAL_MS = 10_000
"""The shortest gap between a client's pings the server accepts while no data flows: below the clients'
30 s (archloop.clients.KEEPALIVE_TIME_MS), as gRPC's keepalive guide asks of the two sides (the
server's default is 5 minutes). A `make run` on a CPU shared with a base-model training lost its
generator stream, quiet for minutes between batches, to GOAWAY "too_many_pings"; a 40 s quiet stream
with 12 s pings did not reproduce it either way, so this is the guide's setting, not a measured fix
(the measured fix is the controller's retry: services.controller.peers.Retry)."""


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.so_reuseport", 0),
    ]


class GrpcService:
    """One running service: the server, its health state and the servicer's lifecycle."""

    def __init__(self, settings: ServiceSettings, servicer: ServicerBase) -> None:
        """Raises SettingsError when the TLS or token settings do not hold together."""
        self.settings = settings
        self.servicer = servicer
        self.health = health.aio.HealthServicer()
        self.credentials = server_credentials(settings)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if settings.auth_token_file:
            try:
                token = read_token_file(settings.auth_token_file)
            except ValueError as exc:
                raise SettingsError(f"--auth-token-file/ARCHLOOP_AUTH_TOKEN_FILE: {exc}") from None
            interceptors.append(TokenAuthInterceptor(token))
        self.server = grpc.aio.server(interceptors=interceptors or None, options=server_options(settings))
        register_wrapped(type(servicer).add_to_server, servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (servicer.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.address = ""

    async def set_health(self, status: int) -> None:
        await self.health.set(self.servicer.service_name, status)
        await self.health.set("", status)

    def bind(self) -> str:
        """Bind the listening port; return host:port. Raises OSError when it cannot."""
        target = f"{self.settings.host}:{self.settings.port}"
        try:
            if self.credentials is not None:
                port = self.server.add_secure_port(target, self.credentials)
            else:
                port = self.server.add_insecure_port(target)
        except RuntimeError as exc:
            raise OSError(str(exc)) from None
        if port == 0:
            raise OSError(f"could not bind {target}")
        self.address = f"{self.settings.host}:{port}"
        return self.address

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the process exit status."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("service_listening", address=self.address, health="NOT_SERVING")
        starting = asyncio.ensure_future(self.servicer.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is not None:
            exc = starting.exception()
            await self.server.stop(0)
            if isinstance(exc, SettingsError):
                print(f"configuration error: {exc}", file=sys.stderr)
                return EXIT_BAD_CONFIG
            log.error("service_start_failed", exc_info=exc)
            return EXIT_FAILED
        if not stop.is_set():
            self.servicer.serving = True
            await self.set_health(health_pb2.HealthCheckResponse.SERVING)
            _write_ready_file(self.settings.ready_file, self.address)
            log.info("service_ready", address=self.address, health="SERVING")
            watching = asyncio.ensure_future(self._follow_liveness())
            await stopping
            watching.cancel()
        starting.cancel()
        return await self.shutdown()

    async def _follow_liveness(self) -> None:
        """Health follows `servicer.live()`: NOT_SERVING while the service cannot work, SERVING again
        once it can (a change is logged)."""
        serving = True
        while True:
            await asyncio.sleep(LIVENESS_SECONDS)
            try:
                live = self.servicer.live()
            except Exception:
                log.exception("liveness_check_failed")
                live = False
            if live != serving:
                serving = live
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if live
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.set_health(status)
                log.warning("service_health_changed", health="SERVING" if live else "NOT_SERVING")

    async def shutdown(self) -> int:
        started = time.perf_counter()
        await self.health.enter_graceful_shutdown()
        log.info("service_stopping", grace_period_seconds=self.settings.grace_period_seconds)
        await self.server.stop(self.settings.grace_period_seconds)
        try:
            # releasing resources must not hold the exit hostage (a dependency may hang while dying)
            await asyncio.wait_for(self.servicer.stop(), timeout=max(self.settings.grace_period_seconds, 5.0))
        except TimeoutError:
            log.error("service_stop_timed_out", grace_period_seconds=self.settings.grace_period_seconds)
            return EXIT_FAILED
        log.info("service_stopped", duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return EXIT_OK


def _write_ready_file(path: str, address: str) -> None:
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"address": address, "pid": os.getpid()}))
    tmp.replace(target)


def run_service(settings: ServiceSettings, make_servicer: Callable[[], ServicerBase]) -> int:
    """Entry point body shared by every service: build, bind, serve, shut down; return exit status."""
    die_with_parent()  # started by the local stack or a test: go when the starter goes
    log.info("service_config", **redacted(settings))

    async def main() -> int:
        try:
            service = GrpcService(settings, make_servicer())
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
        try:
            service.bind()
        except OSError as exc:
            print(
                f"configuration error: {flag_name('port')}/ARCHLOOP_PORT: cannot listen on "
                f"{settings.host}:{settings.port} ({exc})",
                file=sys.stderr,
            )
            return EXIT_BAD_CONFIG
        return await service.run()

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main())
    return EXIT_OK
