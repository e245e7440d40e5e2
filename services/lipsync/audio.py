"""A voice from the wire to 16 kHz mono float32 samples, within limits.

Raw PCM is checked against its declaration (whole frames, a real rate and channel count, and
not a container's bytes sent as PCM); containers are decoded by ffmpeg from a spooled file
(MP4/M4A keep their index at the end, so they cannot be piped).
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from remind.v1 import media_pb2
from scipy import signal

from services.lipsync.engines.base import SAMPLE_RATE
from services.shared.errors import FailedPrecondition, InvalidInput, TooLarge

# No microphone or codec records below 4 kHz or above 768 kHz; a declaration that says so is
# wrong. 7.1 plus height channels is the most a consumer recording carries.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 768000
MAX_CHANNELS = 16
DECODE_TIMEOUT_SECONDS = 120
# The first bytes of containers that callers sometimes send declared as raw PCM.
CONTAINER_SIGNATURES = {
    b"RIFF": "WAV", b"ID3": "MP3", b"\xff\xfb": "MP3", b"\xff\xf3": "MP3", b"fLaC": "FLAC",
    b"OggS": "Ogg", b"\x1aE\xdf\xa3": "WebM/Matroska",
}  # fmt: skip


def decode_voice(
    data: bytes, audio_format: media_pb2.AudioFormat, max_seconds: float
) -> np.ndarray:
    """16 kHz mono float32 samples; InvalidInput, TooLarge or FailedPrecondition if unusable."""
    if not data:
        raise InvalidInput("The audio is empty: send the voice's bytes after the config.")
    encoding = audio_format.encoding
    if encoding == media_pb2.AUDIO_ENCODING_PCM_S16LE:
        samples, rate = _pcm_samples(data, audio_format.sample_rate_hz, audio_format.channels)
        if len(samples) / rate > max_seconds:
            raise TooLarge(_too_long(len(samples) / rate, max_seconds))
        samples = _resampled(samples, rate)
    elif encoding == media_pb2.AUDIO_ENCODING_CONTAINER:
        samples = _container_samples(data, max_seconds)
    else:
        raise InvalidInput(
            "The config must declare the audio encoding: AUDIO_ENCODING_PCM_S16LE (with its "
            "sample rate and channels) or AUDIO_ENCODING_CONTAINER."
        )
    if len(samples) == 0:
        raise InvalidInput("The audio decodes to no samples: send a voice recording.")
    if not np.isfinite(samples).all():
        raise InvalidInput("The audio decodes to invalid samples (NaN or infinity).")
    return samples


def _pcm_samples(data: bytes, rate: int, channels: int) -> tuple[np.ndarray, int]:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidInput(
            f"PCM needs its sample rate: {rate} Hz is outside {MIN_SAMPLE_RATE}-"
            f"{MAX_SAMPLE_RATE} Hz."
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"PCM needs its channel count: {channels} is outside 1-{MAX_CHANNELS}.")
    for signature, container in CONTAINER_SIGNATURES.items():
        if data.startswith(signature):
            raise InvalidInput(
                f"The audio declared as raw PCM s16le starts like a {container} file: declare "
                "AUDIO_ENCODING_CONTAINER, or send the samples without a header."
            )
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise InvalidInput(
            f"PCM s16le with {channels} channel(s) comes in {frame_bytes}-byte frames; "
            f"{len(data)} bytes is not a whole number of frames."
        )
    samples = np.frombuffer(data, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0
    return samples.mean(axis=1), rate


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32)
    common = math.gcd(rate, SAMPLE_RATE)
    return signal.resample_poly(samples, SAMPLE_RATE // common, rate // common).astype(np.float32)


def _container_samples(data: bytes, max_seconds: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="lipsync-") as work:
        path = Path(work) / "voice"
        path.write_bytes(data)
        command = [
            "ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
            "-ac", "1", "-ar", str(SAMPLE_RATE), "-t", f"{max_seconds + 1:.3f}",
            "-f", "f32le", "-",
        ]  # fmt: skip
        try:
            decoded = subprocess.run(
                command, capture_output=True, timeout=DECODE_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise InvalidInput("The audio could not be decoded in time.") from None
    if decoded.returncode != 0:
        reason = decoded.stderr.decode(errors="replace").strip().splitlines()
        detail = reason[-1] if reason else f"ffmpeg exit {decoded.returncode}"
        if "matches no streams" in detail:
            raise FailedPrecondition("The file has no audio track: there is no voice to sync to.")
        raise InvalidInput(f"The audio cannot be decoded: {detail}")
    samples = np.frombuffer(decoded.stdout, dtype="<f4")
    if len(samples) / SAMPLE_RATE > max_seconds:
        raise TooLarge(_too_long(len(samples) / SAMPLE_RATE, max_seconds, at_least=True))
    return samples.copy()


def _too_long(seconds: float, max_seconds: float, at_least: bool = False) -> str:
    length = f"over {max_seconds:.0f} s" if at_least else f"{seconds:.1f} s"
    return (
        f"The voice lasts {length}, over the limit of {max_seconds:.0f} s: trim it to the "
        "template's length."
    )
