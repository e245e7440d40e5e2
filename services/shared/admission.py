"""Admission of streaming calls, so that no caller can take every server thread.

The servers are synchronous: each open stream (WatchJob, health Watch, a client upload, a frame
stream) holds one thread for as long as it lasts, even idle. Streams are counted, in all and
per caller (address, and tenant where there is one), and a stream beyond a cap is refused at
once with RESOURCE_EXHAUSTED and a retry hint. The thread pool has `max_streams` threads for
streams plus `max_workers` that only unary calls and health checks can reach; the unary calls a
server names slow (a VerifyMedia, a CreateTemplate) are capped at half of those, so they cannot
keep quick calls or a liveness probe waiting either.
"""

from __future__ import annotations

import ipaddress
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from services.shared import errors
from services.shared.handlers import Continuation, within

# Streams last minutes; a refused caller should not hammer the server meanwhile.
STREAM_RETRY_SECONDS = 10.0
SLOW_CALL_RETRY_SECONDS = 2.0
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

    def __init__(
        self, caps: Sequence[StreamCap], slow_methods: Iterable[str], max_slow_calls: int
    ) -> None:
        self.caps = caps
        self.slow_methods = frozenset(slow_methods)
        self.max_slow_calls = max(1, max_slow_calls)
        self._open: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def _admitted(self, context: grpc.ServicerContext) -> Iterator[None]:
        places = [(cap.limit, (cap.per, cap.key_of(context))) for cap in self.caps]
        with self._held(places) as refused_at:
            if refused_at is not None:
                cap = self.caps[refused_at]
                raise errors.TooLarge(
                    f"Too many open streams {cap.per} (at most {cap.limit}): close one "
                    f"or retry in {STREAM_RETRY_SECONDS:g} s.",
                    retry_after_seconds=STREAM_RETRY_SECONDS,
                )
            yield

    @contextmanager
    def _slow_call_admitted(self, _context: grpc.ServicerContext) -> Iterator[None]:
        with self._held([(self.max_slow_calls, ("slow calls", ""))]) as refused_at:
            if refused_at is not None:
                raise errors.TooLarge(
                    f"The server is busy with {self.max_slow_calls} such calls at once: retry "
                    f"in {SLOW_CALL_RETRY_SECONDS:g} s.",
                    retry_after_seconds=SLOW_CALL_RETRY_SECONDS,
                )
            yield

    @contextmanager
    def _held(self, places: list[tuple[int, tuple[str, str]]]) -> Iterator[int | None]:
        """Takes one of each (limit, place), or none of them when a place is full: then
        yields the index of the first full one."""
        with self._lock:
            full = next(
                (
                    index
                    for index, (limit, place) in enumerate(places)
                    if self._open[place] >= limit
                ),
                None,
            )
            if full is None:
                for _, place in places:
                    self._open[place] += 1
        try:
            yield full
        finally:
            if full is None:
                with self._lock:
                    for _, place in places:
                        self._open[place] -= 1
                        if not self._open[place]:
                            del self._open[place]

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.request_streaming or handler.response_streaming:
            return within(handler, self._admitted)
        if handler_call_details.method in self.slow_methods:
            return within(handler, self._slow_call_admitted)
        return handler
