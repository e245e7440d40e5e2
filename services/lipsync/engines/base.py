"""The interface every lip sync engine implements, whatever model it runs.

Data path: voice (16 kHz mono samples) -> `prepare_audio` -> AudioFeatures (bytes the caller
carries) -> `start_stream` -> FrameSyncer -> one SyncedFrame per template frame, frame i
driven by the voice at time i / fps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Every engine hears the voice at 16 kHz mono (Wav2Lip's rate; ample for mouth motion).
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AudioFeatures:
    """A voice turned into one engine's features, computed once per job."""

    engine: str  # the engine that produced them; only that engine can use them
    state: bytes  # engine-specific and opaque to callers
    duration_seconds: float


@dataclass(frozen=True)
class SyncedFrame:
    image: np.ndarray  # RGB uint8, same size as the input frame
    face_found: bool  # False: no usable face, the frame is returned unchanged
    mouth_box: tuple[int, int, int, int] | None  # x, y, width, height of the changed region


class FrameSyncer(ABC):
    """Moves the mouth in the frames of one stream, in order.

    One per stream: it keeps state across frames (frame count, face tracking), so it is not
    shared between streams or threads.
    """

    @abstractmethod
    def sync(self, frame: np.ndarray) -> SyncedFrame:
        """The next frame (RGB uint8) with its mouth following the voice."""

    def submit(self, frame: np.ndarray) -> Future[SyncedFrame]:
        """Starts the next frame; results resolve in submission order.

        The servicer keeps several frames in flight, so an engine that batches forward passes
        or looks a few frames ahead (box smoothing) overrides this; the default syncs at once.
        """
        future: Future[SyncedFrame] = Future()
        try:
            future.set_result(self.sync(frame))
        except Exception as error:  # noqa: BLE001 - delivered to whoever waits on the result
            future.set_exception(error)
        return future

    def finish(self) -> None:  # noqa: B027 - most syncers hold nothing back
        """No more frames will come: resolve every frame still held back."""


class LipSyncEngine(ABC):
    name: ClassVar[str]

    @abstractmethod
    def load(self) -> None:
        """Load models once; raise EngineNotReady if the engine cannot serve."""

    @abstractmethod
    def prepare_audio(self, samples: np.ndarray) -> AudioFeatures:
        """The features of a voice given as 16 kHz mono float32 samples in [-1, 1]."""

    @abstractmethod
    def start_stream(self, features: AudioFeatures, fps: float) -> FrameSyncer:
        """A syncer for one stream of frames at `fps`.

        Raises InvalidInput if the features belong to another engine or are corrupt.
        """

    @abstractmethod
    def close(self) -> None:
        """Release models and anything else held since `load`."""
