"""Separating one recording: decoded blocks in, stem blocks and progress out, in order.

Plain Python, no gRPC: the servicer turns these events into messages, and tests and the
benchmark call it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from services.voice.engines.base import ACCOMPANIMENT, VOCALS, VoiceEngine
from services.voice.spectrogram import Segment, SegmentedSeparator
from services.voice.wiener import wiener_filter

SAMPLE_RATE = 44100
# Voice activity in the vocals stem, in 100 ms blocks: a block is voiced when it is louder
# than -45 dBFS and no more than 20 dB below the mixture (not just leakage).
ACTIVITY_BLOCK = SAMPLE_RATE // 10
ACTIVITY_MIN_LEVEL = 10 ** (-45 / 20)
ACTIVITY_MIN_SHARE = 10 ** (-20 / 20)
# A recording with less voice than this has "no voice found".
MIN_VOICED_SECONDS = 0.5


@dataclass(frozen=True)
class StemBlock:
    stem: str
    samples: np.ndarray  # float32 (n, 2), 44.1 kHz


@dataclass(frozen=True)
class Progress:
    seconds_done: float
    seconds_total: float


@dataclass
class SeparationFacts:
    engine: str
    duration_seconds: float = 0.0
    voiced_seconds: float = 0.0
    peak: dict[str, float] = field(default_factory=dict)

    @property
    def voice_found(self) -> bool:
        return self.voiced_seconds >= MIN_VOICED_SECONDS


class VoiceActivity:
    """Counts voiced 100 ms blocks of the vocals stem against the mixture, as they stream."""

    def __init__(self) -> None:
        self._vocals = np.zeros((0, 2), np.float32)
        self._mixture = np.zeros((0, 2), np.float32)
        self.voiced_blocks = 0

    def add(self, vocals: np.ndarray, mixture: np.ndarray) -> None:
        self._vocals = np.concatenate([self._vocals, vocals])
        self._mixture = np.concatenate([self._mixture, mixture])
        whole = min(len(self._vocals), len(self._mixture)) // ACTIVITY_BLOCK * ACTIVITY_BLOCK
        if not whole:
            return
        voice = self._vocals[:whole].reshape(-1, ACTIVITY_BLOCK * 2)
        mix = self._mixture[:whole].reshape(-1, ACTIVITY_BLOCK * 2)
        voice_rms = np.sqrt(np.mean(voice**2, axis=1))
        mix_rms = np.sqrt(np.mean(mix**2, axis=1))
        voiced = (voice_rms > ACTIVITY_MIN_LEVEL) & (voice_rms > ACTIVITY_MIN_SHARE * mix_rms)
        self.voiced_blocks += int(voiced.sum())
        self._vocals, self._mixture = self._vocals[whole:], self._mixture[whole:]

    @property
    def voiced_seconds(self) -> float:
        return self.voiced_blocks * ACTIVITY_BLOCK / SAMPLE_RATE


def separate(
    engine: VoiceEngine,
    blocks: Iterable[np.ndarray],
    stems: tuple[str, ...],
    seconds_total: float,
    facts: SeparationFacts,
    wiener: bool = False,
    overlap_frames: int = 0,
) -> Iterator[StemBlock | Progress]:
    """Separates 44.1 kHz stereo float32 blocks; yields the requested stems as they are final.

    `facts` is filled in as the stream goes (duration, voiced seconds, peaks).
    """
    separate_segment = engine.start_stream()
    if wiener:

        def separate_segment_filtered(segment: Segment, inner=separate_segment):  # type: ignore[no-untyped-def]
            return wiener_filter(segment.stft, inner(segment))

        run = separate_segment_filtered
    else:
        run = separate_segment
    separator = SegmentedSeparator(run, (VOCALS, ACCOMPANIMENT), overlap_frames)
    activity = VoiceActivity()
    mixture = _MixtureDelay()
    samples_in = samples_out = 0

    def emit(ready: dict[str, np.ndarray]) -> Iterator[StemBlock]:
        nonlocal samples_out
        vocals = ready[VOCALS]
        activity.add(vocals, mixture.take(len(vocals)))
        samples_out += len(vocals)
        for stem in stems:
            if len(ready[stem]):
                facts.peak[stem] = max(facts.peak.get(stem, 0.0), float(np.abs(ready[stem]).max()))
                yield StemBlock(stem, ready[stem])

    for block in blocks:
        samples_in += len(block)
        mixture.put(block)
        yield from emit(separator.push(block))
        yield Progress(samples_out / SAMPLE_RATE, max(seconds_total, samples_in / SAMPLE_RATE))
    yield from emit(separator.finish())
    facts.duration_seconds = samples_out / SAMPLE_RATE
    facts.voiced_seconds = activity.voiced_seconds
    yield Progress(facts.duration_seconds, facts.duration_seconds)


class _MixtureDelay:
    """The mixture's samples, held until the matching stem samples come out."""

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []

    def put(self, block: np.ndarray) -> None:
        self._pending.append(block)

    def take(self, count: int) -> np.ndarray:
        joined = np.concatenate(self._pending) if self._pending else np.zeros((0, 2), "f4")
        self._pending = [joined[count:]]
        return joined[:count]
