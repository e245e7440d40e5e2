"""The interface every voice separation engine implements, whatever method it runs.

Data path: recording -> 44.1 kHz stereo samples -> STFT segments (services.voice.spectrogram)
-> the engine's `separate` per segment -> complex STFT per stem -> overlap-add -> stems.
Engines only see spectrogram segments, so streaming, limits and codecs are written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from services.voice.spectrogram import SeparateSegment

VOCALS = "vocals"
ACCOMPANIMENT = "accompaniment"
STEMS = (VOCALS, ACCOMPANIMENT)


class VoiceEngine(ABC):
    name: ClassVar[str]
    device: str = "cpu"

    @abstractmethod
    def load(self) -> None:
        """Load models once per process; raise EngineNotReady if the engine cannot serve."""

    @abstractmethod
    def start_stream(self) -> SeparateSegment:
        """A separation function for the segments of one stream, in order.

        It may keep state across the segments of its stream (e.g. a voice activity detector),
        so it is not shared between streams.
        """

    @abstractmethod
    def close(self) -> None:
        """Release models and anything else held since `load`."""
