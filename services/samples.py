"""Sample inputs for the demo and the tests: face photos taken from photos that ship in
installed wheels, and voice recordings made on the spot.

The bundled templates show the public-domain astronaut portrait (scikit-image), so the sample
"user" photo must be someone else: a face cropped from the group photo that the insightface
wheel ships as its own sample image. It is located without importing insightface, whose import
needs packages this environment does not install.

Voice recordings are speech over music: speech from espeak-ng (several voices, English and
Korean), music synthesised in code (a chord progression, a bass line and a drum pattern at
120 bpm). Both parts are kept, so a separation can be scored against the true voice.
"""

import importlib.util
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import dlib
import numpy as np
import soundfile
from scipy.signal import resample_poly

from services.shared.audio import to_int16
from services.shared.errors import NotFound

GROUP_PHOTO = Path("data") / "images" / "t1.jpg"
PHOTO_SIDE = 400
# The face takes this share of the photo's width, as in an ordinary portrait.
FACE_WIDTH_FRACTION = 0.4

# Voice recordings: 44.1 kHz (the voice service's rate), music at 120 bpm.
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


@lru_cache(maxsize=4)
def sample_face_photo(person: int = 0) -> np.ndarray:
    """A portrait (RGB, 400x400) of one person from the group photo, most clearly seen first."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise NotFound("The sample photos come with the insightface wheel: run make setup.")
    group = cv2.imread(str(Path(spec.origin).parent / GROUP_PHOTO))
    if group is None:
        raise NotFound("The insightface wheel's sample photo is missing: run make setup.")
    photo = cv2.cvtColor(group, cv2.COLOR_BGR2RGB)
    boxes, scores, _ = dlib.get_frontal_face_detector().run(photo, 0, 0.0)
    ranked = [box for _, box in sorted(zip(scores, boxes, strict=True), key=lambda pair: -pair[0])]
    face = ranked[person]
    side = face.width() / FACE_WIDTH_FRACTION
    centre_x, centre_y = (face.left() + face.right()) / 2, (face.top() + face.bottom()) / 2
    scale = PHOTO_SIDE / side
    warp = np.array(
        [
            [scale, 0, PHOTO_SIDE / 2 - scale * centre_x],
            [0, scale, PHOTO_SIDE * 0.45 - scale * centre_y],
        ]
    )
    return cv2.warpAffine(
        photo, warp, (PHOTO_SIDE, PHOTO_SIDE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )


def sample_voice_recording(seconds: float = 20.0) -> bytes:
    """A WAV of synthetic speech (espeak-ng) over music made in code: a voice to extract."""
    return wav_bytes(make_mix("en-us", seconds, voice_to_music_db=3.0).mixture)


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
    wave = np.sum([np.sin(2 * np.pi * frequency * k * t) / k for k in range(1, harmonics + 1)], 0)
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
            chord = np.sum([_tone(f, 4 * BEAT_SECONDS, 6, 1.5) for f in chords[bar]], 0) * 0.25
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
    """A 16-bit WAV of float samples (n,) or (n, channels), converted as everywhere else."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        soundfile.write(out.name, to_int16(samples), rate, subtype="PCM_16")
        return Path(out.name).read_bytes()
