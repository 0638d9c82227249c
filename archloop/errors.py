"""Domain exceptions. Domain code raises these; the servers' RPC wrapper maps each to one gRPC status.

This module imports neither grpc nor nats, so domain modules can use it freely. `status` is the
name of the gRPC status code (see archloop.server.register_wrapped).
"""

from __future__ import annotations


class ArchLoopError(Exception):
    """Base of all expected failures. Anything else escaping a servicer is a bug (INTERNAL)."""

    status = "INTERNAL"


class InvalidArgument(ArchLoopError):
    """The request is malformed; the message names the field."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(ArchLoopError):
    status = "NOT_FOUND"


class AlreadyExists(ArchLoopError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(ArchLoopError):
    """The request is well formed but the system is not in a state to carry it out."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(ArchLoopError):
    """Busy or over a budget; the caller may try another replica or later."""

    status = "RESOURCE_EXHAUSTED"


class Unavailable(ArchLoopError):
    """A dependency is down; clients retry with backoff."""

    status = "UNAVAILABLE"


class DeadlineExceeded(ArchLoopError):
    status = "DEADLINE_EXCEEDED"
