"""Separating one recording: decoded blocks in; progress, stem blocks and the facts out, in order.

Plain Python, no gRPC: `separate` is a generator of events. `Progress` and `StemBlock` come as
the work goes; the last event is always the `SeparationFacts` (engine, duration, voiced
seconds). The servicer turns the events into messages; the file command, tests and the
benchmark call it directly.

Data path: decoded 44.1 kHz stereo blocks -> SegmentedSeparator (STFT segments -> the engine
-> overlap-add) -> stem blocks as soon as they are final. With the Wiener filter the recording
is decoded twice (wiener.py: whole-recording statistics first, then the filtered stems).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from services.voice.engines.base import STEMS, VOCALS, VoiceEngine
from services.voice.spectrogram import Segment, SegmentedSeparator, SeparateSegment
from services.voice.wiener import WienerStatistics

SAMPLE_RATE = 44100
# Voice activity in the vocals stem, in 100 ms blocks: a block is voiced when it is louder
# than -45 dBFS and no more than 20 dB below the mixture (not just leakage).
ACTIVITY_BLOCK = SAMPLE_RATE // 10
ACTIVITY_MIN_LEVEL = 10 ** (-45 / 20)
ACTIVITY_MIN_SHARE = 10 ** (-20 / 20)
# A recording with less voice than this has "no voice found".
MIN_VOICED_SECONDS = 0.5

# Decodes the recording from its start, in blocks (float32 (n, 2), 44.1 kHz); called once, or
# twice with the Wiener filter.
Decode = Callable[[], Iterable[np.ndarray]]


@dataclass(frozen=True)
class StemBlock:
    stem: str
    samples: np.ndarray  # float32 (n, 2), 44.1 kHz


@dataclass(frozen=True)
class Progress:
    """Seconds of the recording done; with the Wiener filter each pass counts for half."""

    seconds_done: float
    seconds_total: float


@dataclass(frozen=True)
class SeparationFacts:
    """The last event of a separation."""

    engine: str
    duration_seconds: float
    voiced_seconds: float

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
    decode: Decode,
    stems: tuple[str, ...],
    seconds_total: float,
    wiener: bool = False,
    overlap_frames: int = 0,
) -> Iterator[StemBlock | Progress | SeparationFacts]:
    """Separates a recording; yields progress, the requested stems' blocks as they are final,
    and finally the facts."""
    share = 1.0
    if wiener:
        statistics = WienerStatistics(STEMS)
        yield from _gather_statistics(engine, decode, statistics, seconds_total, overlap_frames)
        run = _filtered(engine, statistics)
        share = 0.5
    else:
        run = engine.start_stream()
    separator = SegmentedSeparator(run, STEMS, overlap_frames)
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
                yield StemBlock(stem, ready[stem])

    def progress() -> Progress:
        total = max(seconds_total, samples_in / SAMPLE_RATE)
        return Progress(total * (1 - share) + share * samples_out / SAMPLE_RATE, total)

    for block in decode():
        samples_in += len(block)
        mixture.put(block)
        yield from emit(separator.push(block))
        yield progress()
    yield from emit(separator.finish())
    duration = samples_out / SAMPLE_RATE
    yield Progress(duration, duration)
    yield SeparationFacts(engine.name, duration, activity.voiced_seconds)


def _gather_statistics(
    engine: VoiceEngine,
    decode: Decode,
    statistics: WienerStatistics,
    seconds_total: float,
    overlap_frames: int,
) -> Iterator[Progress]:
    """The Wiener filter's first pass over the whole recording; no stems come out of it."""
    estimate = engine.start_magnitude_stream()

    def analyse(segment: Segment) -> dict[str, np.ndarray]:
        statistics.add(segment.first_frame, segment.stft, estimate(segment))
        return {}

    analysis = SegmentedSeparator(analyse, (), overlap_frames)
    samples_in = 0
    for block in decode():
        samples_in += len(block)
        analysis.push(block)
        seconds_in = samples_in / SAMPLE_RATE
        yield Progress(0.5 * seconds_in, max(seconds_total, seconds_in))
    analysis.finish()
    statistics.finish()


def _filtered(engine: VoiceEngine, statistics: WienerStatistics) -> SeparateSegment:
    estimate = engine.start_magnitude_stream()
    return lambda segment: statistics.filter(segment.stft, estimate(segment))


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
