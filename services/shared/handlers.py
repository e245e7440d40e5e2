"""Running every call of a gRPC method handler inside a scope, whatever its streaming shape.

Each interceptor (metrics, trace ids, status mapping, auth) is a context manager around the
call: entered before the handler runs, exited after a unary handler returns or after a
streaming handler's last response, with any error raised in between passing through it.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc

CallScope = Callable[[grpc.ServicerContext], AbstractContextManager[None]]
Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


def within(handler: grpc.RpcMethodHandler | None, scope: CallScope) -> grpc.RpcMethodHandler | None:
    """`handler` with each of its calls run inside `scope(context)`."""
    if handler is None:
        return None

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def scoped(request: Any, context: grpc.ServicerContext) -> Any:
            with scope(context):
                return behavior(request, context)

        return scoped

    def stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def scoped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with scope(context):
                yield from behavior(request, context)

        return scoped

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **codecs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **codecs)
    return handler


def status_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status the call has been given so far, if any."""
    # grpcio has had ServicerContext.code() since 1.38; grpc-stubs does not declare it.
    return context.code()  # type: ignore[attr-defined]
