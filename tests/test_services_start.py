"""Each service starts for real: health SERVING, reflection, no RPC crashing on an empty request,
clean SIGTERM."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from archloop.clients import health_status
from archloop.v1 import controller_pb2, evaluator_pb2, generator_pb2, novelty_pb2, trainer_pb2
from tools.localstack import SERVICE_NAMES

PROTO_MODULES = {
    "controller": controller_pb2,
    "generator": generator_pb2,
    "evaluator": evaluator_pb2,
    "novelty": novelty_pb2,
    "trainer": trainer_pb2,
}
# An empty request to any RPC gets a real answer or a clear client error, never a crash.
CRASH_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED}


def _call_empty(channel: grpc.Channel, method) -> grpc.StatusCode:
    """Call `method` with an empty request of its input type; return the status code."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path, **kwargs)(iter([request_cls()]), timeout=10))
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter([request_cls()]), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path, **kwargs)(request_cls(), timeout=10))
        else:
            channel.unary_unary(path, **kwargs)(request_cls(), timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("name", sorted(SERVICE_NAMES))
def test_service_starts_serves_and_stops(name: str, start_service, grpc_channel) -> None:
    proc = start_service(name, "--grace-period-seconds", "3")
    service_name = SERVICE_NAMES[name]
    assert health_status(proc.address, service_name) == "SERVING"
    assert health_status(proc.address, "") == "SERVING"

    channel = grpc_channel(proc.address)
    reflection_db = ProtoReflectionDescriptorDatabase(channel)
    services = set(reflection_db.get_services())
    assert service_name in services
    assert "grpc.health.v1.Health" in services
    pool = descriptor_pool.DescriptorPool(reflection_db)
    assert pool.FindServiceByName(service_name).full_name == service_name

    descriptor = PROTO_MODULES[name].DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[1]]
    codes = {m.name: _call_empty(channel, m) for m in descriptor.methods}
    assert not {m: c for m, c in codes.items() if c in CRASH_CODES}

    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=8) == 0
    assert time.monotonic() - started < 5
    log = proc.log_path.read_text()
    assert '"service_stopped"' in log
    assert "Traceback" not in log
