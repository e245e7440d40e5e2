"""Recordings in and stems out, through the ffmpeg and ffprobe command lines.

Every recording is read from a local file (spooled from the stream or the store), checked in
three steps before any separation work starts, then decoded block by block through a pipe:
1. `probe_audio`: ffprobe reads the headers only. Not media, no audio track, a forged header
   (sample rate or channel count no recorder produces) or a duration over the limit are refused
   here, so a 3-hour file costs a header read, not a decode.
2. `check_decodable`: ffmpeg decodes the audio to nowhere (seconds for a 10-minute file), so a
   damaged or truncated file is refused before the first stem chunk goes out.
3. `iter_audio`: the real decode, 44.1 kHz stereo float32, in blocks of bounded size.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.shared.errors import FailedPrecondition, InvalidInput, TooLarge

# Spleeter's models are trained on 44.1 kHz stereo; every engine works at this rate.
SAMPLE_RATE = 44100
CHANNELS = 2
# No microphone or codec records below 4 kHz or above 768 kHz; a header that says so is forged.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000
# 7.1 plus height channels is the most a consumer recording carries.
MAX_CHANNELS = 16
PROBE_TIMEOUT_SECONDS = 30
# A file that decodes to less than its header promises by more than this is truncated
# (5 %, and at least 1 s, leaves room for bitrate-estimated durations of VBR MP3s).
TRUNCATION_TOLERANCE = 0.05
TRUNCATION_MIN_SECONDS = 1.0


@dataclass(frozen=True)
class AudioInfo:
    """What a recording's headers say about its (first) audio track."""

    duration_seconds: float
    sample_rate_hz: int
    channels: int
    codec: str


@dataclass(frozen=True)
class RawPcm:
    """Headerless s16le PCM: the caller declares the rate and channel count."""

    sample_rate_hz: int
    channels: int


def probe_audio(path: Path, max_seconds: float, raw: RawPcm | None = None) -> AudioInfo:
    """The recording's audio track, refused when unusable or longer than `max_seconds`."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("The recording is empty: send the audio file's bytes.")
    if raw is not None:
        info = _raw_pcm_info(size, raw)
    else:
        info = _probe_container(path)
    if info.duration_seconds > max_seconds:
        raise TooLarge(
            f"The recording lasts {_clock(info.duration_seconds)}, over the limit of "
            f"{_clock(max_seconds)}: trim it to the part with the voice."
        )
    return info


def _raw_pcm_info(size: int, raw: RawPcm) -> AudioInfo:
    _check_format(raw.sample_rate_hz, raw.channels)
    frame_bytes = 2 * raw.channels
    if size % frame_bytes:
        raise InvalidInput(
            f"PCM s16le with {raw.channels} channel(s) comes in {frame_bytes}-byte frames; "
            f"{size} bytes is not a whole number of frames."
        )
    duration = size / frame_bytes / raw.sample_rate_hz
    return AudioInfo(duration, raw.sample_rate_hz, raw.channels, "pcm_s16le")


def _probe_container(path: Path) -> AudioInfo:
    report = _ffprobe(path)
    streams = report.get("streams", [])
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if audio is None:
        if any(s.get("codec_type") == "video" for s in streams):
            raise FailedPrecondition(
                "The file is a video without a sound track: there is no voice to extract."
            )
        raise InvalidInput("The file has no audio track: send a voice recording.")
    rate = _to_int(audio.get("sample_rate"))
    channels = _to_int(audio.get("channels"))
    _check_format(rate, channels)
    # The audio track's own duration: a video's picture may run longer than its sound.
    duration = _to_float(audio.get("duration")) or _to_float(
        report.get("format", {}).get("duration")
    )
    return AudioInfo(duration, rate, channels, str(audio.get("codec_name", "")))


def _check_format(rate: int, channels: int) -> None:
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


def _ffprobe(path: Path) -> dict:
    command = [
        "ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
        str(path),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise InvalidInput(
            f"The recording took over {PROBE_TIMEOUT_SECONDS} s just to read its headers."
        ) from error
    if result.returncode != 0:
        reason = _last_line(result.stderr, path) or "unknown format"
        raise InvalidInput(f"The file is not a readable audio recording: {reason}")
    return json.loads(result.stdout or b"{}")


def _input_arguments(path: Path, raw: RawPcm | None) -> list[str]:
    if raw is None:
        return ["-i", str(path), "-map", "0:a:0", "-vn"]
    return ["-f", "s16le", "-ar", str(raw.sample_rate_hz), "-ac", str(raw.channels),
            "-i", str(path)]  # fmt: skip


def check_decodable(path: Path, info: AudioInfo, raw: RawPcm | None = None) -> float:
    """Decodes the whole track to nowhere; returns the decoded duration in seconds.

    InvalidInput if ffmpeg reports damage, nothing decodes, or far less decodes than the
    header announced (a truncated upload).
    """
    command = ["ffmpeg", "-v", "error", "-nostdin", *_input_arguments(path, raw),
               "-f", "null", "-progress", "pipe:1", "-"]  # fmt: skip
    timeout = max(60.0, info.duration_seconds)  # audio decodes at well over 10x real time
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise InvalidInput("The recording could not be decoded in reasonable time.") from error
    if result.returncode != 0 or result.stderr.strip():
        reason = _last_line(result.stderr, path) or f"ffmpeg exited with {result.returncode}"
        raise InvalidInput(f"The recording is damaged and cannot be decoded: {reason}")
    decoded = _progress_seconds(result.stdout)
    if decoded <= 0:
        raise InvalidInput("The recording contains no audio samples.")
    missing = info.duration_seconds - decoded
    if missing > max(TRUNCATION_MIN_SECONDS, TRUNCATION_TOLERANCE * info.duration_seconds):
        raise InvalidInput(
            f"The recording is truncated: its header announces {info.duration_seconds:.1f} s "
            f"but only {decoded:.1f} s can be decoded. Upload the whole file."
        )
    return decoded


def _progress_seconds(progress: bytes) -> float:
    seconds = 0.0
    for line in progress.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "out_time_us":
            seconds = max(seconds, _to_float(value) / 1e6)
    return seconds


def iter_audio(path: Path, block_seconds: float, raw: RawPcm | None = None) -> Iterator[np.ndarray]:
    """The track as float32 blocks of shape (samples, 2) at 44.1 kHz, in order.

    Mono is duplicated to both channels and more channels are downmixed, as ffmpeg does;
    memory stays at one block whatever the length of the recording.
    """
    command = ["ffmpeg", "-v", "error", "-nostdin", *_input_arguments(path, raw),
               "-f", "f32le", "-ac", str(CHANNELS), "-ar", str(SAMPLE_RATE),
               "pipe:1"]  # fmt: skip
    block_bytes = int(block_seconds * SAMPLE_RATE) * CHANNELS * 4
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        while True:
            data = process.stdout.read(block_bytes)
            if not data:
                break
            usable = len(data) - len(data) % (CHANNELS * 4)
            yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, CHANNELS)
        if process.wait() != 0:
            raise InvalidInput("The recording could not be decoded to the end.")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def to_pcm_s16le(samples: np.ndarray) -> bytes:
    """Interleaved 16-bit PCM of float samples in [-1, 1] (clipped, rounded)."""
    scaled = np.clip(np.rint(samples * 32767.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def from_pcm_s16le(data: bytes, channels: int = CHANNELS) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0


def _to_int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _to_float(value: object) -> float:
    try:
        number = float(str(value))
    except ValueError:  # "N/A"
        return 0.0
    return number if np.isfinite(number) and number > 0 else 0.0


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def _last_line(stderr: bytes, path: Path) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].replace(str(path), "the file").replace(path.name, "the file")
