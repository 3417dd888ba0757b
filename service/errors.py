"""One error tree for the whole server, and the two tables that put it on the wire.

Every error's message says what the caller should change. Transports never invent their
own errors: they raise or translate these, and each transport's edge turns them into its
wire answer through HTTP_STATUS or GRPC_CODE. The error's `type` travels too (REST: the
body's error.type; gRPC: the `mhaserve-error-type` trailer), so a client rebuilds the same
class whichever transport it used.
"""

from __future__ import annotations

from typing import TypeVar

import grpc

T = TypeVar("T")


class MhaserveError(Exception):
    """Base of every error the server reports on purpose."""

    type = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def http_status(self) -> int:
        return lookup(HTTP_STATUS, type(self), 500)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return lookup(GRPC_CODE, type(self), grpc.StatusCode.INTERNAL)


class InvalidRequest(MhaserveError):
    type = "invalid_request"


class WrongTask(InvalidRequest):
    """A sound request sent to a model whose task is another (an embedder asked to rerank, a
    reranker to embed): 400, not the 422 of a request that is wrong in itself."""


class PayloadTooLarge(MhaserveError):
    type = "payload_too_large"


class Unauthenticated(MhaserveError):
    type = "unauthenticated"


class NotFound(MhaserveError):
    type = "not_found"


class Overloaded(MhaserveError):
    """The queue is full: come back later (Retry-After says when)."""

    type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(MhaserveError):
    """Starting up or shutting down."""

    type = "not_ready"


class DeadlineExceeded(MhaserveError):
    type = "deadline_exceeded"


class Cancelled(MhaserveError):
    """The client went away: nobody reads this answer, it only feeds the counters."""

    type = "cancelled"


class InferenceFailed(MhaserveError):
    type = "inference_failed"


HTTP_STATUS: dict[type[MhaserveError], int] = {
    InvalidRequest: 422,
    WrongTask: 400,
    PayloadTooLarge: 413,
    Unauthenticated: 401,
    NotFound: 404,
    Overloaded: 429,
    NotReady: 503,
    DeadlineExceeded: 504,
    InferenceFailed: 500,
}

GRPC_CODE: dict[type[MhaserveError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
}

ERROR_TYPES: dict[str, type[MhaserveError]] = {
    cls.type: cls for cls in (MhaserveError, *MhaserveError.__subclasses__())
}
ERROR_TYPE_METADATA = "mhaserve-error-type"  # the gRPC trailer that carries an error's type


def lookup(table: dict[type[MhaserveError], T], cls: type, default: T) -> T:
    for klass in cls.__mro__:
        if klass in table:
            return table[klass]
    return default


def error_from_type(error_type: str, message: str) -> MhaserveError:
    """The error a client raises for a server's answer of this type (unknown types: the base)."""
    return ERROR_TYPES.get(error_type, MhaserveError)(message)
