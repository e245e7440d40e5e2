"""Wav2Lip's mel spectrogram, with the numbers of the official `audio.py` and `hparams.py`.

16 kHz mono -> pre-emphasis (0.97) -> |STFT| (n_fft 800, hop 200, window 800, Hann, centred
with reflect padding) -> 80 Slaney mel bands 55-7600 Hz -> dB (floor -100 dB) - 20 dB ->
symmetric normalisation to [-4, 4], clipped. 80 columns per second of audio.

librosa differences from the version the official code was written against (0.7):
- `stft` pads centred frames with zeros by default since 0.10 (`pad_mode="constant"`); 0.7
  reflected. We pass `pad_mode="reflect"` so the first and last columns match the official ones.
- `filters.mel` takes keyword arguments only since 0.10; its defaults (`htk=False`,
  `norm="slaney"`, float32) equal 0.7's (`htk=False`, `norm=1`), so the basis is unchanged.
- `load` resampled with `kaiser_best` in 0.7 and with soxr since 0.10: audio at other rates
  is resampled here by polyphase filtering, which differs from either in the last decimals.
"""

from __future__ import annotations

import librosa
import numpy as np
from scipy import signal

# hparams.py
SAMPLE_RATE = 16000
PREEMPHASIS = 0.97
N_FFT = 800
HOP_SIZE = 200  # 12.5 ms at 16 kHz: 80 mel columns per second
WIN_SIZE = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
COLUMNS_PER_SECOND = SAMPLE_RATE / HOP_SIZE
# inference.py: each video frame sees 16 columns (0.2 s) of the spectrogram.
WINDOW_COLUMNS = 16
# The value of silence after normalisation: the floor, -4.
SILENCE = -MAX_ABS_VALUE

_MEL_BASIS = librosa.filters.mel(
    sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX
)


def melspectrogram(samples: np.ndarray) -> np.ndarray:
    """The normalised (80, T) mel spectrogram of 16 kHz mono samples, float32."""
    # float64 throughout, as the official code (scipy's lfilter returns float64).
    emphasised = signal.lfilter([1.0, -PREEMPHASIS], [1.0], np.asarray(samples, np.float64))
    spectrum = librosa.stft(
        y=emphasised,
        n_fft=N_FFT,
        hop_length=HOP_SIZE,
        win_length=WIN_SIZE,
        pad_mode="reflect",
    )
    mel = np.dot(_MEL_BASIS, np.abs(spectrum))
    min_level = 10.0 ** (MIN_LEVEL_DB / 20.0)
    decibels = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    normalised = 2 * MAX_ABS_VALUE * (decibels - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def window_start(frame_index: int, fps: float) -> int:
    """The first mel column of a video frame's window (official: int(80 / fps * i))."""
    return int(frame_index * (COLUMNS_PER_SECOND / fps))


def mel_window(mel: np.ndarray, frame_index: int, fps: float) -> np.ndarray:
    """The (80, 16) window for a video frame.

    Frames inside the voice get the official window (the last 16 columns once the window
    would run past the end). Frames past the end of the voice get silence, so that the mouth
    closes rather than repeating the last syllable: the official script cuts such frames off
    the video, and our streams return every frame.
    """
    start = window_start(frame_index, fps)
    columns = mel.shape[1]
    if start >= columns:
        return np.full((NUM_MELS, WINDOW_COLUMNS), SILENCE, dtype=np.float32)
    if start + WINDOW_COLUMNS > columns:
        if columns >= WINDOW_COLUMNS:
            return mel[:, columns - WINDOW_COLUMNS :]
        padded = np.full((NUM_MELS, WINDOW_COLUMNS), SILENCE, dtype=np.float32)
        padded[:, :columns] = mel
        return padded
    return mel[:, start : start + WINDOW_COLUMNS]
