"""Audio that the lipsync and voice services both read: limits, raw PCM, ffmpeg, 16-bit samples.

Data path: a caller's bytes are either raw PCM s16le, checked here against the rate and channel
count the caller declared, or a container, whose header ffprobe reads; then ffmpeg decodes them
to float32 at the rate and channel count a service's model needs (each service says which);
results leave as PCM s16le. Each service keeps only what is its own (lipsync: 16 kHz mono for
the model; voice: probing, the damage check and block decoding at 44.1 kHz stereo).

16-bit samples follow ffmpeg's conversions (libswresample/audioconvert.c: float to s16 is
`av_clip_int16(lrintf(x * (1 << 15)))`, s16 to float is `x * (1.0f / (1 << 15))`), which is
also how official Spleeter writes its stems (f32le piped to ffmpeg), so a sample means the same
thing on the wire, in a stored WAV and in the official output.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.shared import ffmpeg
from services.shared.errors import InvalidInput

# No microphone or codec records below 4 kHz or above 768 kHz; a header or a declaration that
# says so is damaged or wrong. 7.1 plus height channels is the most a consumer recording carries.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000
MAX_CHANNELS = 16
PCM_S16_SCALE = 32768.0
# The first bytes of containers that callers sometimes send declared as raw PCM.
CONTAINER_SIGNATURES = {
    b"RIFF": "WAV", b"ID3": "MP3", b"\xff\xfb": "MP3", b"\xff\xf3": "MP3", b"fLaC": "FLAC",
    b"OggS": "Ogg", b"\x1aE\xdf\xa3": "WebM/Matroska",
}  # fmt: skip


@dataclass(frozen=True)
class RawPcm:
    """Headerless PCM s16le, interleaved: the caller declares the rate and channel count."""

    sample_rate_hz: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels

    def seconds(self, size: int) -> float:
        return size / self.frame_bytes / self.sample_rate_hz


class DecodeError(InvalidInput):
    """ffmpeg could not decode the audio; `no_audio_track` when there was nothing to decode."""

    def __init__(self, reason: str, no_audio_track: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.no_audio_track = no_audio_track


def check_header_format(rate: int, channels: int) -> None:
    """Refuses what a container's header says when no recorder produces it (a forged header)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InvalidInput(
            f"A sample rate of {rate} Hz is not a real recording's: expected "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz (the header may be damaged)."
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(
            f"{channels} audio channels is not a real recording's: expected 1-{MAX_CHANNELS} "
            "(the header may be damaged)."
        )


def check_raw_pcm(raw: RawPcm, size: int, head: bytes) -> None:
    """Refuses raw PCM whose declaration cannot be right: an impossible rate or channel count,
    a container's bytes sent as PCM (`head`: the first bytes), or a partial frame."""
    if not MIN_SAMPLE_RATE <= raw.sample_rate_hz <= MAX_SAMPLE_RATE:
        raise InvalidInput(
            f"PCM needs its sample rate: {raw.sample_rate_hz} Hz is outside {MIN_SAMPLE_RATE}-"
            f"{MAX_SAMPLE_RATE} Hz."
        )
    if not 1 <= raw.channels <= MAX_CHANNELS:
        raise InvalidInput(
            f"PCM needs its channel count: {raw.channels} is outside 1-{MAX_CHANNELS}."
        )
    for signature, container in CONTAINER_SIGNATURES.items():
        if head.startswith(signature):
            raise InvalidInput(
                f"The audio declared as raw PCM s16le starts like a {container} file: declare "
                "AUDIO_ENCODING_CONTAINER, or send the samples without a header."
            )
    if size % raw.frame_bytes:
        raise InvalidInput(
            f"PCM s16le with {raw.channels} channel(s) comes in {raw.frame_bytes}-byte frames; "
            f"{size} bytes is not a whole number of frames."
        )


def probe(path: Path) -> dict:
    """ffprobe's report (format and streams) on a recording; InvalidInput if it is not one."""
    return ffmpeg.ffprobe(path, "-show_format", "-show_streams", kind="audio recording")


def ffmpeg_input(path: Path, raw: RawPcm | None = None) -> list[str]:
    """ffmpeg arguments that read the first audio track of `path` (or raw PCM as declared)."""
    if raw is None:
        return ["-i", str(path), "-map", "0:a:0", "-vn"]
    return ["-f", "s16le", "-ar", str(raw.sample_rate_hz), "-ac", str(raw.channels),
            "-i", str(path)]  # fmt: skip


def decode_command(
    path: Path,
    sample_rate: int,
    channels: int,
    raw: RawPcm | None = None,
    max_seconds: float | None = None,
) -> list[str]:
    """ffmpeg decoding to interleaved float32 on stdout at `sample_rate` and `channels`."""
    limit = ["-t", f"{max_seconds:.3f}"] if max_seconds is not None else []
    return ["ffmpeg", "-nostdin", "-v", "error", *ffmpeg_input(path, raw),
            "-ac", str(channels), "-ar", str(sample_rate), *limit,
            "-f", "f32le", "pipe:1"]  # fmt: skip


def decode(
    path: Path,
    sample_rate: int,
    channels: int,
    timeout: float,
    raw: RawPcm | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """The whole track as float32 (samples, channels); DecodeError if ffmpeg fails."""
    command = decode_command(path, sample_rate, channels, raw, max_seconds)
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise InvalidInput("The audio could not be decoded in time.") from None
    if result.returncode != 0:
        reason = ffmpeg.last_line(result.stderr.decode(errors="replace"), path)
        reason = reason or f"ffmpeg exit {result.returncode}"
        raise DecodeError(reason, no_audio_track="matches no streams" in reason)
    usable = len(result.stdout) - len(result.stdout) % (4 * channels)
    return np.frombuffer(result.stdout[:usable], dtype="<f4").reshape(-1, channels).copy()


def decode_blocks(
    path: Path,
    sample_rate: int,
    channels: int,
    block_frames: int,
    raw: RawPcm | None = None,
    max_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """The track (its first `max_seconds` when given) as float32 blocks (at most `block_frames`,
    channels), in order, through a pipe: memory stays at one block whatever the length.
    DecodeError if ffmpeg fails on the way."""
    command = decode_command(path, sample_rate, channels, raw, max_seconds)
    frame_bytes = 4 * channels
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        pending = b""
        while data := process.stdout.read(block_frames * frame_bytes):
            data = pending + data
            usable = len(data) - len(data) % frame_bytes
            pending = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
        if process.wait() != 0:
            raise DecodeError("The recording could not be decoded to the end.")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1) as 16-bit integers: rounded to nearest, clipped (as ffmpeg)."""
    scaled = np.rint(np.asarray(samples, np.float32) * np.float32(PCM_S16_SCALE))
    return np.clip(scaled, -32768, 32767).astype("<i2")


def to_pcm_s16le(samples: np.ndarray) -> bytes:
    """Interleaved PCM s16le bytes of float samples (samples, channels)."""
    return to_int16(samples).tobytes()


def from_pcm_s16le(data: bytes, channels: int) -> np.ndarray:
    """Float32 samples (samples, channels) of interleaved PCM s16le bytes."""
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    return pcm.astype(np.float32) / np.float32(PCM_S16_SCALE)
