"""One exception class per gRPC status, so callers catch what they mean (``except Unavailable``)."""

from __future__ import annotations

import grpc


class StatsError(Exception):
    """A call to proca-stats ended with a status other than OK."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class Cancelled(StatsError):
    code = grpc.StatusCode.CANCELLED


class Unknown(StatsError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(StatsError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(StatsError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(StatsError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StatsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(StatsError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(StatsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(StatsError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(StatsError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(StatsError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(StatsError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(StatsError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(StatsError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(StatsError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(StatsError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[StatsError]] = {
    cls.code: cls for cls in StatsError.__subclasses__()
}


def error_from(call_error: grpc.RpcError) -> StatsError:
    """The StatsError matching a failed call's status."""
    code = call_error.code()  # a failed unary call's error is also its grpc.Call
    details = call_error.details() or code.name
    return _BY_CODE.get(code, Unknown)(details)
