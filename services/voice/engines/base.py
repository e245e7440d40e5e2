"""The interface every voice separation engine implements, whatever method it runs.

Data path: recording -> 44.1 kHz stereo samples -> STFT segments (services.voice.spectrogram)
-> the engine's `separate` per segment -> complex STFT per stem -> overlap-add -> stems.
Engines only see spectrogram segments, so streaming, limits and codecs are written once.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from services.shared.engines import Engine
from services.voice.spectrogram import EstimateSegment, Segment, SeparateSegment

VOCALS = "vocals"
ACCOMPANIMENT = "accompaniment"
STEMS = (VOCALS, ACCOMPANIMENT)


class VoiceEngine(Engine):
    @abstractmethod
    def start_stream(self) -> SeparateSegment:
        """A separation function for the segments of one stream, in order.

        It may keep state across the segments of its stream (e.g. a voice activity detector),
        so it is not shared between streams.
        """

    def start_magnitude_stream(self) -> EstimateSegment:
        """Each stem's magnitude estimate (frames, bins, 2) per segment: what the multichannel
        Wiener filter starts from. By default the magnitudes of the separated stems; a network
        that estimates magnitudes overrides this with its raw output, as official Spleeter hands
        `norbert.wiener` its network's outputs rather than the masked mixture."""
        separate = self.start_stream()

        def magnitudes(segment: Segment) -> dict[str, np.ndarray]:
            return {stem: np.abs(stft) for stem, stft in separate(segment).items()}

        return magnitudes
