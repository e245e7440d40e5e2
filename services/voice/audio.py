"""Recordings in and stems out for the voice service, through the ffmpeg and ffprobe commands.

Every recording is read from a local file (spooled from the stream or the store), checked in
three steps before any separation work starts, then decoded block by block through a pipe:
1. `probe_audio`: ffprobe reads the headers only. Not media, no audio track, a forged header
   (sample rate or channel count no recorder produces) or a duration over the limit are refused
   here, so a 3-hour file costs a header read, not a decode.
2. `check_decodable`: ffmpeg decodes the audio to nowhere (seconds for a 10-minute file), so a
   damaged or truncated file is refused before the first stem chunk goes out.
3. `iter_audio`: the real decode, 44.1 kHz stereo float32, in blocks of bounded size.
A caller that needs only the start of a recording gets steps 2 and 3 for that start only: the
rest of a 20-minute file is never decoded.

Channels as official Spleeter reads them (spleeter/audio/ffmpeg.py decodes at the file's own
channel count, then spleeter/audio/convertor.py `to_stereo` repeats a mono channel): mono is
decoded as mono and duplicated here, at the same level. ffmpeg's own `-ac 2` would instead pan
it at -3 dB per side. Over two channels, ffmpeg's standard downmix is used where the official
code keeps the first two channels, which for 5.1 would drop the centre channel and the dialogue
in it.

Stems leave as PCM s16le (services.shared.audio's conversion, ffmpeg's): the chunks on the wire
and the stored WAV hold the same 16-bit samples.
"""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.shared import audio as shared_audio
from services.shared import ffmpeg
from services.shared.audio import RawPcm
from services.shared.errors import FailedPrecondition, InvalidInput, TooLarge

# Spleeter's models are trained on 44.1 kHz stereo (resources/2stems.json); every engine works
# at this rate.
SAMPLE_RATE = 44100
CHANNELS = 2
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


def probe_audio(path: Path, max_seconds: float, raw: RawPcm | None = None) -> AudioInfo:
    """The recording's audio track, refused when unusable or longer than `max_seconds`."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("The recording is empty: send the audio file's bytes.")
    if raw is not None:
        with open(path, "rb") as recording:
            shared_audio.check_raw_pcm(raw, size, recording.read(8))
        info = AudioInfo(raw.seconds(size), raw.sample_rate_hz, raw.channels, "pcm_s16le")
    else:
        info = _probe_container(path)
    if info.duration_seconds > max_seconds:
        raise TooLarge(
            f"The recording lasts {_clock(info.duration_seconds)}, over the limit of "
            f"{_clock(max_seconds)}: trim it to the part with the voice."
        )
    return info


def _probe_container(path: Path) -> AudioInfo:
    report = shared_audio.probe(path)
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
    shared_audio.check_header_format(rate, channels)
    # The audio track's own duration: a video's picture may run longer than its sound.
    duration = _to_float(audio.get("duration")) or _to_float(
        report.get("format", {}).get("duration")
    )
    return AudioInfo(duration, rate, channels, str(audio.get("codec_name", "")))


def check_decodable(
    path: Path, info: AudioInfo, raw: RawPcm | None = None, first_seconds: float | None = None
) -> float:
    """Decodes the track (its first `first_seconds` when given) to nowhere; returns the decoded
    duration in seconds.

    InvalidInput if ffmpeg reports damage, nothing decodes, or far less decodes than the
    header announced (a truncated upload).
    """
    limit = ["-t", f"{first_seconds:.3f}"] if first_seconds is not None else []
    command = ["ffmpeg", "-v", "error", "-nostdin", *shared_audio.ffmpeg_input(path, raw),
               *limit, "-f", "null", "-progress", "pipe:1", "-"]  # fmt: skip
    expected = min(info.duration_seconds, first_seconds or info.duration_seconds)
    timeout = max(60.0, expected)  # audio decodes at well over 10x real time
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise InvalidInput("The recording could not be decoded in reasonable time.") from error
    if result.returncode != 0 or result.stderr.strip():
        reason = ffmpeg.last_line(result.stderr.decode(errors="replace"), path)
        reason = reason or f"ffmpeg exited with {result.returncode}"
        raise InvalidInput(f"The recording is damaged and cannot be decoded: {reason}")
    decoded = _progress_seconds(result.stdout)
    if decoded <= 0:
        raise InvalidInput("The recording contains no audio samples.")
    missing = expected - decoded
    if missing > max(TRUNCATION_MIN_SECONDS, TRUNCATION_TOLERANCE * expected):
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


@dataclass(frozen=True)
class Recording:
    """A recording on local disk that passed the checks, ready to be decoded (more than once)."""

    path: Path
    info: AudioInfo
    raw: RawPcm | None
    seconds: float  # the decoded duration (of the first `first_seconds`, when given)
    first_seconds: float | None = None

    def blocks(self, block_seconds: float) -> Iterator[np.ndarray]:
        return iter_audio(
            self.path, block_seconds, self.info.channels, self.raw, self.first_seconds
        )


def checked_recording(
    path: Path, max_seconds: float, raw: RawPcm | None = None, first_seconds: float | None = None
) -> Recording:
    """Probes the recording and decodes it (its first `first_seconds` when given) once to
    nowhere: every refusal before any work."""
    info = probe_audio(path, max_seconds, raw)
    decoded_seconds = check_decodable(path, info, raw, first_seconds)
    if decoded_seconds > max_seconds:
        raise TooLarge(
            f"The recording decodes to {decoded_seconds:.0f} s, over the limit of "
            f"{max_seconds:.0f} s."
        )
    return Recording(path, info, raw, decoded_seconds, first_seconds)


def iter_audio(
    path: Path,
    block_seconds: float,
    source_channels: int,
    raw: RawPcm | None = None,
    first_seconds: float | None = None,
) -> Iterator[np.ndarray]:
    """The track (its first `first_seconds` when given) as float32 blocks of shape (samples, 2)
    at 44.1 kHz, in order.

    `source_channels` is the track's own count (from `probe_audio`): mono is decoded as mono
    and duplicated, stereo passes as it is, more channels are downmixed by ffmpeg. Memory stays
    at one block whatever the length of the recording.
    """
    decoded_channels = 1 if source_channels == 1 else CHANNELS
    block_frames = int(block_seconds * SAMPLE_RATE)
    blocks = shared_audio.decode_blocks(
        path, SAMPLE_RATE, decoded_channels, block_frames, raw, first_seconds
    )
    for block in blocks:
        yield np.repeat(block, CHANNELS, axis=1) if decoded_channels == 1 else block


class StemWriter:
    """A 44.1 kHz stereo 16-bit WAV file written from the same PCM bytes as the stem chunks."""

    def __init__(self, path: Path) -> None:
        self._file = wave.open(str(path), "wb")
        self._file.setnchannels(CHANNELS)
        self._file.setsampwidth(2)
        self._file.setframerate(SAMPLE_RATE)

    def write(self, pcm: bytes) -> None:
        self._file.writeframesraw(pcm)

    def close(self) -> None:
        self._file.close()  # patches the RIFF and data sizes in the header


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
