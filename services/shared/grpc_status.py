"""The one place where domain errors become gRPC status codes.

`StatusInterceptor` wraps every handler of a server: a `RemindError` aborts the call with
the mapped code and its message; anything else is logged with its traceback and becomes
INTERNAL with a short reference, so callers never see a stack trace.
"""

import datetime
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.shared import errors
from services.shared.handlers import Continuation, status_code, within

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.RemindError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.EngineNotReady: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

# A status message is for a person: short, and free of the internals a tool may print.
MAX_MESSAGE_CHARS = 1000
_ADDRESS = re.compile(r"\s*@\s*0x[0-9a-fA-F]+|\b0x[0-9a-fA-F]{8,}\b")


def public_message(message: str) -> str:
    """The message as a caller sees it: memory addresses (ffmpeg prints its contexts' ones)
    removed, and at most MAX_MESSAGE_CHARS characters."""
    cleaned = _ADDRESS.sub("", message)
    if len(cleaned) > MAX_MESSAGE_CHARS:
        cleaned = cleaned[: MAX_MESSAGE_CHARS - 1] + "…"
    return cleaned


ERROR_BY_STATUS: dict[grpc.StatusCode, type[errors.RemindError]] = {
    code: error for error, code in STATUS_BY_ERROR.items() if error is not errors.EngineNotReady
}


def status_for(error: errors.RemindError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[kind]
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(rpc_error: grpc.RpcError, what: str) -> errors.RemindError:
    """Turns a downstream service's status back into a domain error, keeping its message."""
    code = rpc_error.code() if hasattr(rpc_error, "code") else grpc.StatusCode.UNKNOWN
    detail = rpc_error.details() if hasattr(rpc_error, "details") else str(rpc_error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.Unavailable(f"{what} is unavailable: {detail}")
    kind = ERROR_BY_STATUS.get(code, errors.RemindError)
    return kind(detail or f"{what} failed ({code.name})")


def _with_retry_info(error: errors.RemindError) -> grpc.Status:
    """The status with a google.rpc.RetryInfo detail, so clients know when to come back."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromTimedelta(datetime.timedelta(seconds=error.retry_after_seconds or 0))
    detail = any_pb2.Any()
    detail.Pack(retry)
    code = status_for(error)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code.value[0], message=public_message(str(error)), details=[detail]
        )
    )


def _abort(context: grpc.ServicerContext, error: Exception) -> None:
    if status_code(context) is not None:  # the handler already aborted with its own status
        raise error
    if isinstance(error, grpc.RpcError):
        # The request stream itself broke: the client cancelled or went away mid-stream.
        context.abort(grpc.StatusCode.CANCELLED, "The request stream ended before it was done.")
    if isinstance(error, errors.RemindError) and error.retry_after_seconds is not None:
        context.abort_with_status(_with_retry_info(error))
    if isinstance(error, errors.RemindError):
        context.abort(status_for(error), public_message(str(error)))
    reference = uuid.uuid4().hex[:12]
    log.exception("unhandled error, reference %s", reference)
    context.abort(grpc.StatusCode.INTERNAL, f"Internal error (reference {reference}).")


@contextmanager
def _statuses(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except Exception as error:  # noqa: BLE001 - every error gets a status
        _abort(context, error)


class StatusInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return within(continuation(handler_call_details), _statuses)
