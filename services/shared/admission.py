"""Admission of streaming calls, so that no caller can take every server thread.

The servers are synchronous: each open stream (WatchJob, health Watch, a client upload, a frame
stream) holds one thread for as long as it lasts, even idle. Streams are counted, in all and
per caller (address, and tenant where there is one), and a stream beyond a cap is refused at
once with RESOURCE_EXHAUSTED and a retry hint. The thread pool has `max_streams` threads for
streams plus `max_workers` that only unary calls and health checks can reach.
"""

from __future__ import annotations

import ipaddress
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from services.shared import errors
from services.shared.handlers import Continuation, within

# Streams last minutes; a refused caller should not hammer the server meanwhile.
STREAM_RETRY_SECONDS = 10.0
FORWARDED_FOR_HEADER = "x-forwarded-for"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class StreamCap:
    """At most `limit` open streams for each value of `key_of(context)`; `per` names the
    key for the caller ("per tenant")."""

    per: str
    limit: int
    key_of: Callable[[grpc.ServicerContext], str]


def trusted_networks(addresses: str) -> list[Network]:
    """The comma-separated addresses or networks ("10.0.0.0/8") of trusted proxies."""
    try:
        return [
            ipaddress.ip_network(address.strip(), strict=False)
            for address in addresses.split(",")
            if address.strip()
        ]
    except ValueError as error:
        raise errors.Misconfigured(
            f"trusted proxies must be IP addresses or networks, comma-separated: {error}"
        ) from None


def peer_host(peer: str) -> str:
    """The host of a gRPC peer: "ipv4:10.0.0.7:5443" -> "10.0.0.7", "ipv6:[::1]:5443" -> "::1"."""
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0]
    return host.strip("[]")


def caller_address(context: grpc.ServicerContext, trusted_proxies: Sequence[Network]) -> str:
    """The caller's address: the peer's, or, when the peer is a trusted proxy (the edge), the
    last x-forwarded-for entry, the one the proxy itself appended."""
    host = peer_host(context.peer())
    try:
        trusted = any(ipaddress.ip_address(host) in network for network in trusted_proxies)
    except ValueError:
        return host
    if trusted:
        for key, value in context.invocation_metadata() or ():
            if key == FORWARDED_FOR_HEADER and str(value).strip():
                return str(value).rsplit(",", 1)[-1].strip()
    return host


class StreamAdmission(grpc.ServerInterceptor):
    """Counts open streaming calls under each cap and refuses one that would exceed any."""

    def __init__(self, caps: Sequence[StreamCap]) -> None:
        self.caps = caps
        self._open: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def _admitted(self, context: grpc.ServicerContext) -> Iterator[None]:
        slots = [(cap, (cap.per, cap.key_of(context))) for cap in self.caps]
        with self._lock:
            for cap, slot in slots:
                if self._open[slot] >= cap.limit:
                    raise errors.TooLarge(
                        f"Too many open streams {cap.per} (at most {cap.limit}): close one "
                        f"or retry in {STREAM_RETRY_SECONDS:g} s.",
                        retry_after_seconds=STREAM_RETRY_SECONDS,
                    )
            for _, slot in slots:
                self._open[slot] += 1
        try:
            yield
        finally:
            with self._lock:
                for _, slot in slots:
                    self._open[slot] -= 1
                    if not self._open[slot]:
                        del self._open[slot]

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        return within(handler, self._admitted)
