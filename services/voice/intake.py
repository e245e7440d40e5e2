"""Getting a recording onto local disk from a SeparateVoice stream or the store, within limits.

Recordings are spooled to a temporary file rather than piped: containers such as MP4/M4A keep
their index at the end, ffprobe must read the header before anything is decoded, and the
byte limit is enforced as the bytes arrive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from services.shared.errors import InvalidInput, TooLarge
from services.shared.storage import ObjectStore

ItemT = TypeVar("ItemT")
_END = object()


def with_idle_timeout(items: Iterator[ItemT], timeout: float, what: str) -> Iterator[ItemT]:
    """Yields `items`, but raises InvalidInput when none arrives for `timeout` seconds.

    A client that opens a stream and never sends its config (or stops mid-upload without
    closing) would otherwise hold a worker thread until its deadline, if it has one.
    """
    buffer: queue.Queue = queue.Queue(maxsize=4)

    def pump() -> None:
        try:
            for item in items:
                buffer.put(item)
            buffer.put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            buffer.put(error)

    threading.Thread(target=pump, daemon=True, name="request-reader").start()
    while True:
        try:
            item = buffer.get(timeout=timeout)
        except queue.Empty:
            raise InvalidInput(
                f"The {what} stream sent nothing for {timeout:g} s: send the config first, then "
                "the audio chunks, and close the stream."
            ) from None
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def spool_chunks(chunks: Iterator[bytes], path: Path, max_bytes: int) -> int:
    """Writes chunks to `path`; TooLarge past `max_bytes`. Returns the size."""
    size = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(
                    f"The recording is over the limit of {max_bytes // (1024 * 1024)} MiB: "
                    "trim it to the part with the voice."
                )
            out.write(chunk)
    return size


def fetch_object(store: ObjectStore, bucket: str, key: str, path: Path, max_bytes: int) -> int:
    if not bucket or not key:
        raise InvalidInput("The source object needs both a bucket and a key.")
    size = store.size(bucket, key)
    if size > max_bytes:
        raise TooLarge(
            f"{key} is {size // (1024 * 1024)} MiB, over the limit of "
            f"{max_bytes // (1024 * 1024)} MiB: trim it to the part with the voice."
        )
    store.download(bucket, key, path)
    return size
