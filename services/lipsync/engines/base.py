"""The interface every lip sync engine implements, whatever model it runs.

Data path: voice (16 kHz mono samples) -> `prepare_audio` -> AudioFeatures (bytes the caller
carries) -> `start_stream` -> a FrameStream -> one FrameResult per template frame (its box:
the mouth region), frame i driven by the voice at time i / fps.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from services.shared.engine_state import StateKind
from services.shared.engines import Engine, FrameStream

# Every engine hears the voice at 16 kHz mono (Wav2Lip's rate; ample for mouth motion).
SAMPLE_RATE = 16000
FEATURES_STATE = StateKind("the audio features", "prepare the audio again")


@dataclass(frozen=True)
class AudioFeatures:
    """A voice turned into one engine's features, computed once per job."""

    engine: str  # the engine that produced them; only that engine can use them
    state: bytes  # engine-specific and opaque to callers
    duration_seconds: float


class LipSyncEngine(Engine):
    @abstractmethod
    def prepare_audio(self, samples: np.ndarray) -> AudioFeatures:
        """The features of a voice given as 16 kHz mono float32 samples in [-1, 1]."""

    @abstractmethod
    def start_stream(self, features: AudioFeatures, fps: float) -> FrameStream:
        """Moves the mouth in each frame of one stream at `fps`.

        Raises InvalidInput if the features belong to another engine or are corrupt.
        """
