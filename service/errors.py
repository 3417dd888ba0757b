"""One error hierarchy for the whole server, and the two tables that map it onto the wire.

Every error's message says what the caller should change. Transports never invent their
own errors: they raise or translate these.
"""

from __future__ import annotations

import grpc


class MhaserveError(Exception):
    """Base of every error the server reports on purpose."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    type = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(MhaserveError):
    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    type = "invalid_request"


class PayloadTooLarge(MhaserveError):
    http_status = 413
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    type = "payload_too_large"


class Unauthenticated(MhaserveError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    type = "unauthenticated"


class NotFound(MhaserveError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    type = "not_found"


class Overloaded(MhaserveError):
    """The queue is full: come back later (Retry-After says when)."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(MhaserveError):
    """Starting up or shutting down."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    type = "not_ready"


class DeadlineExceeded(MhaserveError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    type = "deadline_exceeded"


class Cancelled(MhaserveError):
    """The client went away; nobody reads this answer, it only feeds the counters."""

    http_status = 499
    grpc_code = grpc.StatusCode.CANCELLED
    type = "cancelled"


class InferenceFailed(MhaserveError):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    type = "inference_failed"
