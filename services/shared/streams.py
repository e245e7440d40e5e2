"""Helpers for streams of work."""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

ItemT = TypeVar("ItemT")
_END = object()


def read_ahead(items: Iterator[ItemT], depth: int) -> Iterator[ItemT]:
    """Pulls up to `depth` items ahead of the consumer on a separate thread, keeping order.

    A model service uses it to read and submit the next frames of a stream while earlier ones
    are still being computed, so that its engine can batch them; the bounded queue is the
    back-pressure. An error raised while reading is re-raised to the consumer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stopped = threading.Event()

    def pump() -> None:
        try:
            for item in items:
                while not stopped.is_set():
                    try:
                        buffer.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stopped.is_set():
                    return
            buffer.put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            buffer.put(error)

    threading.Thread(target=pump, daemon=True, name="read-ahead").start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
