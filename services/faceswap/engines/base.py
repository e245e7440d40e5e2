"""The interface every face swap engine implements, whatever model it runs.

Data path: photo -> `prepare_identity` -> FaceIdentity (bytes the caller carries) ->
`start_stream` -> FrameSwapper -> one SwappedFrame per template frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class FaceIdentity:
    """The face to put on every frame, computed once per job and reusable by any replica."""

    engine: str  # name of the engine that produced it; only that engine can use it
    state: bytes  # engine-specific and opaque to callers
    face_box: tuple[int, int, int, int]  # x, y, width, height of the face in the photo
    detection_score: float


@dataclass(frozen=True)
class SwappedFrame:
    image: np.ndarray  # RGB uint8, same size as the input frame
    face_found: bool  # False: no usable face, the frame is returned unchanged
    face_box: tuple[int, int, int, int] | None  # x, y, width, height of the swapped face


class FrameSwapper(ABC):
    """Swaps one identity into the frames of one stream, in order.

    One per stream: it may keep state across frames (e.g. landmark smoothing), so it is not
    shared between streams or threads.
    """

    @abstractmethod
    def swap(self, frame: np.ndarray) -> SwappedFrame:
        """Put the identity's face on the main face of an RGB uint8 frame."""

    def submit(self, frame: np.ndarray) -> Future[SwappedFrame]:
        """Starts swapping the next frame of the stream; results resolve in submission order.

        The servicer keeps several frames in flight, so an engine that batches forward passes
        (across frames and across streams) overrides this; the default swaps at once.
        """
        future: Future[SwappedFrame] = Future()
        try:
            future.set_result(self.swap(frame))
        except Exception as error:  # noqa: BLE001 - delivered to whoever waits on the result
            future.set_exception(error)
        return future


class FaceSwapEngine(ABC):
    name: ClassVar[str]

    @abstractmethod
    def load(self) -> None:
        """Load models once; raise EngineNotReady if the engine cannot serve."""

    @abstractmethod
    def prepare_identity(self, photo: np.ndarray) -> FaceIdentity:
        """The identity of the main face of an RGB uint8 photo.

        Raises FailedPrecondition("No face found in the photo: ...") when there is no face.
        """

    @abstractmethod
    def start_stream(self, identity: FaceIdentity) -> FrameSwapper:
        """A swapper for one stream of frames.

        Raises InvalidInput if the identity belongs to another engine or its state is corrupt.
        """

    @abstractmethod
    def close(self) -> None:
        """Release models and anything else held since `load`."""
