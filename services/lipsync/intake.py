"""Reading a request stream without waiting on it forever."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

from services.shared.errors import InvalidInput

ItemT = TypeVar("ItemT")
_END = object()


def with_idle_timeout(items: Iterator[ItemT], timeout: float, what: str) -> Iterator[ItemT]:
    """Yields `items`, but raises InvalidInput when none arrives for `timeout` seconds.

    gRPC's request iterator blocks until the client sends; a client that opens a stream and
    never sends its config (or stalls) would otherwise hold a worker thread until its deadline,
    if it has one. A reader thread feeds a queue that is read with a timeout.
    """
    buffer: queue.Queue = queue.Queue(maxsize=4)
    stopped = threading.Event()

    def offer(item: object) -> bool:
        while not stopped.is_set():
            try:
                buffer.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            offer(error)

    threading.Thread(target=pump, daemon=True, name="request-reader").start()
    try:
        while True:
            try:
                item = buffer.get(timeout=timeout)
            except queue.Empty:
                raise InvalidInput(
                    f"The {what} stream sent nothing for {timeout:g} s: send the config first, "
                    "then the rest, and close the stream."
                ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
