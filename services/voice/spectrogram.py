"""Streaming short-time Fourier analysis and resynthesis with Spleeter's conventions.

Official Spleeter (spleeter/model/__init__.py) prepends one frame (4096 samples) of zeros to
the waveform, takes a periodic-Hann STFT (frame 4096, step 1024, end padded with zeros), cuts
the spectrogram into segments of T = 512 frames that the network sees one at a time, masks,
and resynthesises by plain overlap-add of Hann-windowed frames times 2/3 (the window's squared
sum at 75 % overlap is 1.5), then drops the leading frame of zeros.

`SegmentedSeparator` does exactly that on a stream: samples go in as they are decoded, each
complete segment is separated as soon as its last frame is covered, and output samples leave
as soon as no later frame overlaps them. Memory is one segment (~12 s) whatever the length.
Segments may overlap by a few frames, cross-faded, to hide the network's edges
(`segment_overlap_frames`, 0 by default); with no overlap the output equals the official one.
With no stems to return, the same segments are only analysed (the Wiener filter's first pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FRAME_LENGTH = 4096
FRAME_STEP = 1024
SEGMENT_FRAMES = 512  # Spleeter's T
HOPS_PER_FRAME = FRAME_LENGTH // FRAME_STEP
BINS = FRAME_LENGTH // 2 + 1
CHANNELS = 2
WINDOW_COMPENSATION = 2.0 / 3.0
# tf.signal.hann_window(periodic=True)
WINDOW = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(FRAME_LENGTH) / FRAME_LENGTH)).astype(
    np.float32
)


@dataclass(frozen=True)
class Segment:
    """One segment as an engine sees it."""

    stft: np.ndarray  # complex64 (frames, BINS, CHANNELS)
    waveform: np.ndarray  # float32 (samples, CHANNELS): the samples its frames cover
    first_frame: int  # index of its first frame in the stream (frame 0 starts 4096 early)


# An engine's separation of one segment: complex STFT per stem, same shape as the input.
SeparateSegment = Callable[[Segment], dict[str, np.ndarray]]
# An engine's magnitude estimate of each stem for one segment: float32 (frames, BINS, CHANNELS).
EstimateSegment = Callable[[Segment], dict[str, np.ndarray]]


def stft_frames(waveform: np.ndarray, frames: int) -> np.ndarray:
    """`frames` frames starting at sample 0 of `waveform` (which must cover them)."""
    view = np.lib.stride_tricks.sliding_window_view(waveform, FRAME_LENGTH, axis=0)
    windowed = view[: frames * FRAME_STEP : FRAME_STEP] * WINDOW  # (frames, CHANNELS, FRAME)
    return np.fft.rfft(windowed, axis=-1).transpose(0, 2, 1).astype(np.complex64)


class SegmentedSeparator:
    """Feeds a stream of stereo samples through an engine's per-segment separation."""

    def __init__(
        self,
        separate: SeparateSegment,
        stems: tuple[str, ...],
        overlap_frames: int = 0,
        segment_frames: int = SEGMENT_FRAMES,
    ) -> None:
        if not 0 <= overlap_frames < segment_frames // 2:
            raise ValueError("overlap_frames must be in [0, segment_frames / 2)")
        self._separate = separate
        self._stems = stems
        self._segment_frames = segment_frames
        self._overlap = overlap_frames
        self._hop_frames = segment_frames - overlap_frames
        # Input: padded samples from absolute index `_input_start` on.
        self._input = np.zeros((FRAME_LENGTH, CHANNELS), np.float32)
        self._input_start = 0
        self._next_frame = 0  # first frame of the next segment
        self._samples_in = 0  # real (unpadded) samples received
        # Frames separated but held back to be cross-faded with the next segment's head.
        self._held: dict[str, np.ndarray] | None = None
        # Output: overlap-add accumulators from absolute padded index `_output_start` on.
        self._output = {stem: np.zeros((0, CHANNELS), np.float32) for stem in stems}
        self._output_start = 0
        self._emitted = 0  # real samples emitted per stem
        ramp = (np.arange(overlap_frames, dtype=np.float32) + 0.5) / max(overlap_frames, 1)
        self._fade_in = ramp[:, None, None]

    def push(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Adds samples; returns the stems' samples that are final so far (maybe none)."""
        self._samples_in += len(samples)
        self._input = np.concatenate([self._input, samples.astype(np.float32, copy=False)])
        while self._input_start + len(self._input) >= self._segment_end_sample():
            self._run_segment()
        return self._take_final(self._committed_frames() * FRAME_STEP)

    def finish(self) -> dict[str, np.ndarray]:
        """Separates what remains (zero-padded, as official) and returns the rest."""
        total_frames = -(-(self._samples_in + FRAME_LENGTH) // FRAME_STEP)
        while self._committed_frames() < total_frames:
            missing = self._segment_end_sample() - self._input_start - len(self._input)
            if missing > 0:
                self._input = np.concatenate([self._input, np.zeros((missing, CHANNELS), "f4")])
            self._run_segment()
        if self._held is not None:
            self._overlap_add(self._held, self._next_frame)
            self._held = None
        return self._take_final(None)

    def _segment_end_sample(self) -> int:
        return (self._next_frame + self._segment_frames - 1) * FRAME_STEP + FRAME_LENGTH

    def _committed_frames(self) -> int:
        """Frames added to the output: no later frame reaches a sample before the next one's
        start, so those samples are final (held frames all start at or after it)."""
        return self._next_frame

    def _run_segment(self) -> None:
        first = self._next_frame
        offset = first * FRAME_STEP - self._input_start
        span = (self._segment_frames - 1) * FRAME_STEP + FRAME_LENGTH
        waveform = self._input[offset : offset + span]
        segment = Segment(stft_frames(waveform, self._segment_frames), waveform, first)
        stems = self._separate(segment)
        if self._held is not None:
            for stem in self._stems:
                head = stems[stem][: self._overlap]
                stems[stem][: self._overlap] = (
                    head * self._fade_in + self._held[stem] * (1.0 - self._fade_in)
                )
        keep = self._hop_frames if self._overlap else self._segment_frames
        self._overlap_add({stem: stems[stem][:keep] for stem in self._stems}, first)
        self._held = (
            {stem: stems[stem][keep:].copy() for stem in self._stems} if self._overlap else None
        )
        self._next_frame = first + keep
        # Input before the next segment's first frame is never read again.
        drop = self._next_frame * FRAME_STEP - self._input_start
        self._input = self._input[drop:]
        self._input_start += drop

    def _overlap_add(self, stems: dict[str, np.ndarray], first_frame: int) -> None:
        if not stems:
            return
        frames = next(iter(stems.values())).shape[0]
        start = first_frame * FRAME_STEP
        end = start + (frames - 1) * FRAME_STEP + FRAME_LENGTH
        for stem, spectrum in stems.items():
            buffer = self._output[stem]
            needed = end - self._output_start
            if len(buffer) < needed:
                buffer = np.concatenate([buffer, np.zeros((needed - len(buffer), CHANNELS), "f4")])
            signal = np.fft.irfft(spectrum.transpose(0, 2, 1), n=FRAME_LENGTH, axis=-1)
            signal = (signal * (WINDOW * WINDOW_COMPENSATION)).astype(np.float32)
            # Each frame is HOPS_PER_FRAME consecutive hops; adding hop j of every frame at once,
            # last hop first, sums each sample in frame order, as a frame-by-frame loop would.
            hops = signal.transpose(0, 2, 1).reshape(frames, HOPS_PER_FRAME, FRAME_STEP, CHANNELS)
            base = start - self._output_start
            for hop in reversed(range(HOPS_PER_FRAME)):
                at = base + hop * FRAME_STEP
                target = buffer[at : at + frames * FRAME_STEP].reshape(frames, FRAME_STEP, CHANNELS)
                target += hops[:, hop]
            self._output[stem] = buffer

    def _take_final(self, final_before: int | None) -> dict[str, np.ndarray]:
        """Output samples before padded index `final_before` (None: all), minus the padding."""
        if not self._stems:
            return {}
        limit = self._output_start + len(next(iter(self._output.values())))
        if final_before is not None:
            limit = min(limit, final_before)
        out: dict[str, np.ndarray] = {}
        cut = limit - self._output_start
        for stem in self._stems:
            ready = self._output[stem][:cut]
            self._output[stem] = self._output[stem][cut:]
            first_real = max(FRAME_LENGTH - self._output_start, 0)
            real = ready[first_real:]
            real = real[: max(self._samples_in - self._emitted, 0)]
            out[stem] = real
        self._output_start = limit
        self._emitted += len(out[self._stems[0]])
        return out
