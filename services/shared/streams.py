"""Reading request streams on a separate thread: ahead of the consumer, or with an idle timeout.

gRPC's request iterator blocks until the client sends. Both helpers move that wait onto a
reader thread that feeds a bounded queue (the back-pressure); an error raised while reading is
re-raised to the consumer, and the reader stops when the consumer does.
"""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

from services.shared.errors import InvalidInput

ItemT = TypeVar("ItemT")
_END = object()


def _pumped(
    items: Iterator[ItemT], depth: int, idle_timeout: float | None, on_idle: str
) -> Iterator[ItemT]:
    buffer: queue.Queue = queue.Queue(maxsize=max(depth, 1))
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
                item = buffer.get(timeout=idle_timeout)
            except queue.Empty:
                raise InvalidInput(on_idle) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()


def read_ahead(items: Iterator[ItemT], depth: int) -> Iterator[ItemT]:
    """Pulls up to `depth` items ahead of the consumer, keeping order.

    A model service uses it to read and submit the next frames of a stream while earlier ones
    are still being computed, so that its engine can batch them.
    """
    return _pumped(items, depth, None, "")


def with_idle_timeout(items: Iterator[ItemT], timeout: float, what: str) -> Iterator[ItemT]:
    """Yields `items`, but raises InvalidInput when none arrives for `timeout` seconds.

    A client that opens a stream and never sends its config (or stalls mid-stream without
    closing) would otherwise hold a worker thread until its deadline, if it has one.
    """
    return _pumped(
        items,
        4,
        timeout,
        f"The {what} stream sent nothing for {timeout:g} s: send its first message (the "
        "config or metadata) at once, then the rest, and close the stream.",
    )
