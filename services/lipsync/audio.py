"""A voice from the wire to 16 kHz mono float32 samples, within limits.

Raw PCM (for instance the voice service's stems: s16le, 44.1 kHz stereo) is checked against
its declaration (services.shared.audio), averaged to mono and resampled; containers are decoded
by ffmpeg from a spooled file (MP4/M4A keep their index at the end, so they cannot be piped).
16 kHz mono is what both engines read (Wav2Lip hparams: sample_rate 16000).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from remind.v1 import media_pb2
from scipy import signal

from services.lipsync.engines.base import SAMPLE_RATE
from services.shared import audio as shared_audio
from services.shared.errors import FailedPrecondition, InvalidInput, TooLarge

DECODE_TIMEOUT_SECONDS = 120


def decode_voice(
    data: bytes, audio_format: media_pb2.AudioFormat, max_seconds: float
) -> np.ndarray:
    """16 kHz mono float32 samples; InvalidInput, TooLarge or FailedPrecondition if unusable."""
    if not data:
        raise InvalidInput("The audio is empty: send the voice's bytes after the config.")
    encoding = audio_format.encoding
    if encoding == media_pb2.AUDIO_ENCODING_PCM_S16LE:
        raw = shared_audio.RawPcm(audio_format.sample_rate_hz, audio_format.channels)
        shared_audio.check_raw_pcm(raw, len(data), data[:8])
        if raw.seconds(len(data)) > max_seconds:
            raise TooLarge(_too_long(raw.seconds(len(data)), max_seconds))
        mono = shared_audio.from_pcm_s16le(data, raw.channels).mean(axis=1)
        samples = _resampled(mono, raw.sample_rate_hz)
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


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32)
    common = math.gcd(rate, SAMPLE_RATE)
    return signal.resample_poly(samples, SAMPLE_RATE // common, rate // common).astype(np.float32)


def _container_samples(data: bytes, max_seconds: float) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="lipsync-") as work:
        path = Path(work) / "voice"
        path.write_bytes(data)
        try:
            # One second past the limit is enough to know the voice is too long.
            samples = shared_audio.decode(
                path, SAMPLE_RATE, 1, DECODE_TIMEOUT_SECONDS, max_seconds=max_seconds + 1
            )[:, 0]
        except shared_audio.DecodeError as error:
            if error.no_audio_track:
                raise FailedPrecondition(
                    "The file has no audio track: there is no voice to sync to."
                ) from None
            raise InvalidInput(f"The audio cannot be decoded: {error.reason}") from None
    if len(samples) / SAMPLE_RATE > max_seconds:
        raise TooLarge(_too_long(len(samples) / SAMPLE_RATE, max_seconds, at_least=True))
    return samples


def _too_long(seconds: float, max_seconds: float, at_least: bool = False) -> str:
    length = f"over {max_seconds:.0f} s" if at_least else f"{seconds:.1f} s"
    return (
        f"The voice lasts {length}, over the limit of {max_seconds:.0f} s: trim it to the "
        "template's length."
    )
