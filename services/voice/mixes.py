"""Voice-over-music mixes made on the spot, for the voice tests and benchmark.

Speech comes from espeak-ng (several voices, English and Korean); music is synthesised in code
(a chord progression, a bass line and a drum pattern at 120 bpm). Both are kept, so a
separation can be scored against the true voice.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

SAMPLE_RATE = 44100
BEAT_SECONDS = 0.5  # 120 bpm

SENTENCES = {
    "en-us": "Hello, this is my own voice. I am recording a short message for the video, "
    "and the music behind me should disappear.",
    "en-gb+f3": "Good morning. The quick brown fox jumps over the lazy dog, while the band "
    "keeps playing the same four chords.",
    "ko": "안녕하세요. 저는 지금 목소리를 녹음하고 있습니다. "
    "음악은 사라지고 제 목소리만 남아야 합니다.",
}


@dataclass(frozen=True)
class Mix:
    mixture: np.ndarray  # float32 (n, 2)
    voice: np.ndarray  # float32 (n, 2), the voice as it is in the mixture
    music: np.ndarray  # float32 (n, 2)


def speech(voice: str, text: str, seconds: float) -> np.ndarray:
    """espeak-ng speech at 44.1 kHz stereo, repeated with pauses to fill `seconds`."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        samples, rate = soundfile.read(path, dtype="float32")
    samples = resample_poly(samples, SAMPLE_RATE, rate).astype(np.float32)
    pause = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)
    length = int(seconds * SAMPLE_RATE)
    track = np.tile(np.concatenate([samples, pause]), length // (len(samples) + len(pause)) + 1)
    return np.repeat(track[:length, None], 2, axis=1)


def _tone(frequency: float, seconds: float, harmonics: int, decay: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * frequency * k * t) / k for k in range(1, harmonics + 1))
    envelope = np.exp(-t / decay) * np.minimum(t / 0.01, 1.0)
    return (wave * envelope).astype(np.float32)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords (left-leaning), bass (centre) and drums (right-leaning), stereo."""
    rng = np.random.default_rng(seed)
    length = int(seconds * SAMPLE_RATE)
    beat = int(BEAT_SECONDS * SAMPLE_RATE)
    chords = [(220.0, 277.18, 329.63), (196.0, 246.94, 293.66), (174.61, 220.0, 261.63),
              (196.0, 246.94, 311.13)]  # fmt: skip
    bass_notes = [110.0, 98.0, 87.31, 98.0]
    left = np.zeros(length + 4 * beat, np.float32)
    right = np.zeros_like(left)
    kick = _tone(55.0, 0.3, 1, 0.08) * 1.5
    snare = rng.standard_normal(int(0.2 * SAMPLE_RATE)).astype(np.float32)
    snare *= np.exp(-np.arange(len(snare)) / (0.05 * SAMPLE_RATE)).astype(np.float32) * 0.4
    hat = np.diff(rng.standard_normal(int(0.05 * SAMPLE_RATE) + 1)).astype(np.float32)
    hat *= np.exp(-np.arange(len(hat)) / (0.01 * SAMPLE_RATE)).astype(np.float32) * 0.15
    for index, start in enumerate(range(0, length, beat)):
        bar = (index // 4) % len(chords)
        if index % 4 == 0:
            chord = sum(_tone(f, 4 * BEAT_SECONDS, 6, 1.5) for f in chords[bar]) * 0.25
            left[start : start + len(chord)] += chord
            right[start : start + len(chord)] += 0.5 * chord
        bass = _tone(bass_notes[bar], BEAT_SECONDS, 3, 0.3) * 0.5
        for channel in (left, right):
            channel[start : start + len(bass)] += bass
        drum = kick if index % 2 == 0 else snare
        right[start : start + len(drum)] += drum
        left[start : start + len(drum)] += 0.6 * drum
        for half in (start, start + beat // 2):
            right[half : half + len(hat)] += hat
    return np.stack([left[:length], right[:length]], axis=1)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))) + 1e-12)


def make_mix(voice: str, seconds: float, voice_to_music_db: float = 0.0, seed: int = 0) -> Mix:
    """Speech over music at a known level: `voice_to_music_db` of voice RMS over music RMS."""
    spoken = speech(voice, SENTENCES[voice], seconds)
    background = music(seconds, seed)
    spoken *= 0.1 / rms(spoken)
    background *= 0.1 / rms(background) * 10 ** (-voice_to_music_db / 20)
    mixture = spoken + background
    peak = float(np.abs(mixture).max())
    scale = 0.9 / peak if peak > 0.9 else 1.0
    return Mix(
        (mixture * scale).astype(np.float32),
        (spoken * scale).astype(np.float32),
        (background * scale).astype(np.float32),
    )


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        soundfile.write(out.name, samples, rate, subtype="PCM_16")
        return Path(out.name).read_bytes()
