"""Gathers work items from many threads into batches for one call, e.g. one forward pass.

A model run on a batch costs little more than on one item (on a GPU, almost nothing more), so
frames of one stream and of concurrent streams share forward passes. One worker thread takes
the first waiting item, then waits at most `max_wait_seconds` for more, up to
`max_batch_size`, runs the batch, and resolves each item's future in the order given.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from services.shared.settings import FrameServerSettings

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
DerivedT = TypeVar("DerivedT")
_STOP = object()


class BatcherClosed(RuntimeError):
    """Work was submitted after close()."""


class Batcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[ItemT]], Sequence[ResultT]],
        max_batch_size: int,
        max_wait_seconds: float,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max(0.0, max_wait_seconds)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # the size of every batch run; read by benchmarks
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    @classmethod
    def for_frames(
        cls,
        run_batch: Callable[[Sequence[ItemT]], Sequence[ResultT]],
        settings: FrameServerSettings,
        name: str,
    ) -> Batcher[ItemT, ResultT]:
        """A batcher sized by a frame service's settings (REMIND_*_BATCH_MAX_*)."""
        return cls(run_batch, settings.batch_max_size, settings.batch_max_wait_ms / 1000.0, name)

    def submit(self, item: ItemT) -> Future[ResultT]:
        future: Future[ResultT] = Future()
        with self._close_lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self._queue.put((item, future))
        return future

    def close(self) -> None:
        """Runs what was already submitted, then stops the worker."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join()

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_seconds
            while len(batch) < self.max_batch_size:
                try:
                    waiting = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if waiting is _STOP:
                    stopping = True
                    break
                batch.append(waiting)
            self._run(batch)

    def _run(self, batch: list[tuple[ItemT, Future[ResultT]]]) -> None:
        live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes.append(len(live))
        try:
            results = self._run_batch([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"a batch of {len(live)} gave {len(results)} results")
        except Exception as error:  # noqa: BLE001 - every waiting caller gets the error
            log.exception("batch of %d failed", len(live))
            for _, future in live:
                future.set_exception(error)
            return
        for (_, future), result in zip(live, results, strict=True):
            future.set_result(result)


def then(future: Future[ResultT], finish: Callable[[ResultT], DerivedT]) -> Future[DerivedT]:
    """A future for `finish(result)`, run by whichever thread completes `future`."""
    derived: Future[DerivedT] = Future()

    def complete(done: Future[ResultT]) -> None:
        try:
            derived.set_result(finish(done.result()))
        except Exception as error:  # noqa: BLE001 - delivered to whoever waits on derived
            derived.set_exception(error)

    future.add_done_callback(complete)
    return derived
