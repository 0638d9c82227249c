"""Random protobuf messages for fuzzing the services: every field of a message type, filled (or not)
with hostile values drawn from a `random.Random`: empty and huge strings, unicode garbage, control
characters, negative and extreme numbers, NaN and infinities, enum numbers no enum declares, deep
and wide nesting. Hypothesis drives the Random in the property tests (st.randoms), a seeded Random
drives the long runs; the same code makes both. Below them: the services' protos, the statuses a
client can act on, and hostile calls through a real channel (tests/test_fuzz.py, bench/leak_probe.py).
"""

from __future__ import annotations

import random
import sys

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from archloop.v1 import controller_pb2, evaluator_pb2, generator_pb2, novelty_pb2, trainer_pb2

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
WORDS = ("", " ", "digits", "cifar10", "corpus", "a" * 300, "../../etc/passwd", "0", "-1", "None",
         "dns:///x:1", "\x00", "🧨" * 40, "Ω≈ç√∫", "\u202e\u200b",
         "import torch\nclass Net: pass\n")  # fmt: skip
HUGE = 300 * 1024  # over every service's code limit (256 KiB)


def random_text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(WORDS)
    if roll < 0.8:
        ranges = ((32, 127), (0x80, 0xD800), (0xE000, 0x110000))  # printable, BMP, above: no surrogates
        return "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(0, 64)))
    if roll < 0.95:
        return "".join(chr(rng.randrange(0, 32)) for _ in range(rng.randrange(1, 16)))
    return "x" * rng.choice((HUGE, 64 * 1024))


def random_scalar(field: FieldDescriptor, rng: random.Random):
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return random_text(rng)
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice((0, 1, 7, 100, 4096)))
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        value = rng.choice((0.0, -1.0, 1e-9, 0.5, 1.0, 2.0, 1e300, -1e300, float("nan"), float("inf"),
                            -float("inf"), sys.float_info.max, rng.uniform(-1e6, 1e6)))  # fmt: skip
        return (
            max(min(value, 3.4e38), -3.4e38) if t == FieldDescriptor.TYPE_FLOAT and value == value else value
        )
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [-1, 7, 99, 2**31 - 1])
    f = FieldDescriptor
    low, high = {
        f.TYPE_INT32: INT32, f.TYPE_SINT32: INT32, f.TYPE_SFIXED32: INT32,
        f.TYPE_INT64: INT64, f.TYPE_SINT64: INT64, f.TYPE_SFIXED64: INT64,
        f.TYPE_UINT32: UINT32, f.TYPE_FIXED32: UINT32, f.TYPE_UINT64: UINT64, f.TYPE_FIXED64: UINT64,
    }[t]  # fmt: skip
    return rng.choice((0, 1, -1 if low < 0 else 2, low, high, rng.randint(low, high), rng.randint(-3, 300)))


def fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    """Fill `message` in place with random values (each field present with probability ~0.6)."""
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            if is_map:
                key_field, value_field = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                target = getattr(message, field.name)
                for _ in range(rng.randrange(0, 4)):
                    key = random_scalar(key_field, rng)
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        fill(target[key], rng, depth + 1)
                    else:
                        target[key] = random_scalar(value_field, rng)
                continue
            if repeated:
                for _ in range(rng.choice((0, 1, 2, 5, 40))):
                    fill(getattr(message, field.name).add(), rng, depth + 1)
            else:
                sub = getattr(message, field.name)
                sub.SetInParent()
                fill(sub, rng, depth + 1)
            continue
        if repeated:
            getattr(message, field.name).extend(
                random_scalar(field, rng) for _ in range(rng.choice((0, 1, 3, 50)))
            )
        else:
            setattr(message, field.name, random_scalar(field, rng))
    return message


def random_request(descriptor: Descriptor, rng: random.Random) -> Message:
    return fill(GetMessageClass(descriptor)(), rng)


# --- hostile calls against the real services (tests/test_fuzz.py, bench/leak_probe.py) ---------------

PROTOS = {
    "novelty": novelty_pb2.DESCRIPTOR.services_by_name["NoveltyService"],
    "generator": generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"],
    "evaluator": evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"],
    "trainer": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    "controller": controller_pb2.DESCRIPTOR.services_by_name["ControllerService"],
}
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
# calls that store what they are given: left out of the memory runs (growth there is data, not a leak)
STORING = {"CreateCollection", "AdmitEntry", "BatchAdmitEntries", "ImportEntries", "CheckAndAdmit",
           "StartFineTune", "LoadAdapter", "StartExperiment"}  # fmt: skip


def service_flags(tmp, closed: str) -> dict[str, list[str]]:
    """Each service's flags for a hostile run under `tmp`: the generator replays a folder of programs
    (a fuzzed request that happens to be valid must not start minutes of sampling); the controller's
    peers are the closed address `closed` and it has no corpus, so a valid experiment is refused."""
    from programs import write_family

    write_family(tmp / "programs", 3)
    return {
        "novelty": ["--db-path", str(tmp / "novelty.sqlite3")],
        "generator": ["--backend", "replay", "--replay-dir", str(tmp / "programs"), "--max-candidates", "16"],
        "evaluator": ["--work-dir", str(tmp / "jobs"), "--max-concurrent-evaluations", "2"],
        "trainer": ["--state-dir", str(tmp / "trainer"), "--artifacts-dir", str(tmp / "artifacts")],
        "controller": ["--state-dir", str(tmp / "controller"), "--corpus-dir", str(tmp / "no-corpus"),
                       "--retry-budget-seconds", "1", "--resume-on-start", "false",
                       *[a for n in ("generator", "evaluator", "novelty", "trainer")
                         for a in (f"--{n}-addr", closed)]],
    }  # fmt: skip


def call(
    channel: grpc.Channel, service: str, method_name: str, rng: random.Random, garbage: bool
) -> grpc.RpcError | None:
    """One call with a random request (or raw random bytes); the error it ended with, if any."""
    proto = PROTOS[service]
    method = proto.methods_by_name[method_name]
    path = f"/{proto.full_name}/{method.name}"
    response = GetMessageClass(method.output_type).FromString
    if garbage:
        serialize = bytes  # the payload is already bytes: not a message of the method's type
        payloads = [rng.randbytes(rng.choice((1, 5, 64, 1024)))]
    else:
        serialize = lambda m: m.SerializeToString()  # noqa: E731
        payloads = [random_request(method.input_type, rng) for _ in range(rng.choice((1, 1, 2, 5)))]
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(path, serialize, response)(payloads[0], timeout=60)
        elif not method.client_streaming:
            for _ in zip(range(20), channel.unary_stream(path, serialize, response)(payloads[0], timeout=60),
                         strict=False):  # fmt: skip
                pass
        elif not method.server_streaming:
            channel.stream_unary(path, serialize, response)(iter(payloads), timeout=60)
        else:
            for _ in channel.stream_stream(path, serialize, response)(iter(payloads), timeout=60):
                pass
    except grpc.RpcError as exc:
        return exc
    return None


def burst(
    channel: grpc.Channel, service: str, rng: random.Random, n: int, codes: dict[str, int],
    methods: list[str] | None = None,
) -> None:  # fmt: skip
    """`n` hostile calls that store nothing: random requests to the methods that do not store (or to
    `methods`), and every fourth call raw bytes, to any method (refused before anything is stored).
    Each status is counted in `codes`; one a client cannot act on fails the caller."""
    names = methods or [m.name for m in PROTOS[service].methods if m.name not in STORING]
    storing = [] if methods else [m.name for m in PROTOS[service].methods if m.name in STORING]
    for i in range(n):
        garbage = i % 4 == 0
        name = rng.choice(names + storing) if garbage else rng.choice(names)
        error = call(channel, service, name, rng, garbage)
        code = error.code() if error else grpc.StatusCode.OK
        assert code in ACCEPTABLE, f"{service}.{name}: {code.name}: {error and error.details()}"
        codes[code.name] = codes.get(code.name, 0) + 1
