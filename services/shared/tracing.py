"""Trace ids carried across service calls in gRPC metadata, and stamped on every log line.

A call that arrives without a trace id gets a new one; a job uses its own id as the trace id,
so every log line of every service that worked on a job can be found by the job's id.
"""

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from services.shared.handlers import Continuation, within

TRACE_HEADER = "x-remind-trace-id"
_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")


def current_trace_id() -> str:
    return _trace_id.get()


def set_trace_id(trace_id: str) -> contextvars.Token:
    return _trace_id.set(trace_id)


def trace_metadata() -> list[tuple[str, str]]:
    """Metadata that carries the current trace id to the next service."""
    trace_id = current_trace_id()
    return [(TRACE_HEADER, trace_id)] if trace_id else []


def _incoming_trace_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TRACE_HEADER and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return uuid.uuid4().hex


class TraceInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return within(continuation(handler_call_details), _traced)


@contextmanager
def _traced(context: grpc.ServicerContext) -> Iterator[None]:
    token = _trace_id.set(_incoming_trace_id(context))
    try:
        yield
    finally:
        _trace_id.reset(token)
