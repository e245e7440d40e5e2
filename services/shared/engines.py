"""What every engine of every model service is, and the per-stream worker of the frame services.

An engine loads once (`load`, which raises EngineNotReady when it cannot serve), serves many
streams, names the device it runs on, and releases what it holds on shutdown (`close`). The
frame services (faceswap, lipsync) start one FrameStream per request stream: it works on the
stream's frames in order and may keep state across them (landmark smoothing, box tracking).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

ResultT = TypeVar("ResultT")
Box = tuple[int, int, int, int]  # x, y, width, height in the frame's pixels


class Engine(ABC):
    name: ClassVar[str]
    device: str = "cpu"

    @abstractmethod
    def load(self) -> None:
        """Load models once; raise EngineNotReady if the engine cannot serve."""

    @abstractmethod
    def close(self) -> None:
        """Release models and anything else held since `load`."""


@dataclass(frozen=True)
class FrameResult:
    """A frame as an engine gives it back."""

    image: np.ndarray  # RGB uint8, same size as the input frame
    face_found: bool  # False: no usable face, and the frame comes back unchanged
    box: Box | None  # what changed: the swapped face, or the moved mouth

    @classmethod
    def unchanged(cls, frame: np.ndarray) -> FrameResult:
        return cls(image=frame, face_found=False, box=None)


class FrameStream(ABC):
    """The frames of one stream, in order. Not shared between streams or threads."""

    @abstractmethod
    def process(self, frame: np.ndarray) -> FrameResult:
        """The result for the next frame (RGB uint8)."""

    def submit(self, frame: np.ndarray) -> Future[FrameResult]:
        """Starts the next frame; results resolve in submission order.

        The servicers keep several frames in flight, so an engine that batches forward passes
        or looks a few frames ahead overrides this; by default the frame is done at once.
        """
        return completed(self.process, frame)

    def finish(self) -> None:  # noqa: B027 - most streams hold nothing back
        """No more frames will come: resolve every frame still held back."""


def resolved(result: ResultT) -> Future[ResultT]:
    future: Future[ResultT] = Future()
    future.set_result(result)
    return future


def completed(work: Callable[[np.ndarray], ResultT], frame: np.ndarray) -> Future[ResultT]:
    """A future already holding `work(frame)`, or the error it raised."""
    future: Future[ResultT] = Future()
    try:
        future.set_result(work(frame))
    except Exception as error:  # noqa: BLE001 - delivered to whoever waits on the result
        future.set_exception(error)
    return future
