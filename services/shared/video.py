"""Video and GIF through the ffmpeg command line, always streamed through a pipe one frame at
a time, so memory stays bounded by a frame or two whatever the length of the clip. Frames are
RGB uint8 arrays of shape (height, width, 3).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import numpy as np

from services.shared.errors import InvalidInput, RemindError
from services.shared.ffmpeg import StderrTail, ffprobe, read_exactly
from services.shared.images import check_frame

# Error diffusion keeps skin gradients smooth; the palette is built from all frames because
# in a moving-head template the whole picture moves, not just a small region.
GIF_FILTER = (
    "split[frames][stats];"
    "[stats]palettegen=stats_mode=full:reserve_transparent=0[palette];"
    "[frames][palette]paletteuse=dither=sierra2_4a"
)


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a media file. Sizes are as displayed (rotation applied)."""

    width: int
    height: int
    duration_seconds: float
    fps: float
    frame_count: int
    has_video: bool
    has_audio: bool
    format_name: str
    video_codec: str


def probe(path: str | Path) -> MediaInfo:
    """Read a media file's streams with ffprobe; InvalidInput if it is not audio or video."""
    report = ffprobe(path, "-show_format", "-show_streams")
    streams = report.get("streams", [])
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
        ),
        None,
    )
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    if video is None and not has_audio:
        raise InvalidInput(f"{Path(path).name} has no video or audio stream.")

    container = report.get("format", {})
    duration = _positive_float(container.get("duration")) or _positive_float(
        (video or {}).get("duration")
    )
    if video is None:
        return MediaInfo(
            width=0,
            height=0,
            duration_seconds=duration,
            fps=0.0,
            frame_count=0,
            has_video=False,
            has_audio=True,
            format_name=container.get("format_name", ""),
            video_codec="",
        )

    fps = _frame_rate(video.get("avg_frame_rate")) or _frame_rate(video.get("r_frame_rate"))
    frame_count = int(video.get("nb_frames") or 0) or _count_video_packets(path)
    width, height = int(video.get("width", 0)), int(video.get("height", 0))
    if _rotation_degrees(video) % 180 == 90:
        width, height = height, width
    return MediaInfo(
        width=width,
        height=height,
        duration_seconds=duration,
        fps=fps,
        frame_count=frame_count,
        has_video=True,
        has_audio=has_audio,
        format_name=container.get("format_name", ""),
        video_codec=video.get("codec_name", ""),
    )


def _count_video_packets(path: str | Path) -> int:
    # GIF and some streamed containers do not store a frame count; counting packets only
    # demuxes, it never decodes a frame.
    report = ffprobe(
        path, "-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets"
    )
    streams = report.get("streams") or [{}]
    return int(streams[0].get("nb_read_packets") or 0)


def _frame_rate(rate: str | None) -> float:
    try:
        return float(Fraction(rate)) if rate else 0.0
    except (ValueError, ZeroDivisionError):  # ffprobe writes "0/0" when it does not know
        return 0.0


def _positive_float(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value is not None else 0.0
    except ValueError:  # "N/A"
        return 0.0


def _rotation_degrees(video: dict) -> int:
    # Phones store portrait video as landscape plus a rotation, which ffmpeg applies on decode.
    for side_data in video.get("side_data_list", []):
        if "rotation" in side_data:
            return int(side_data["rotation"]) % 360
    return int(video.get("tags", {}).get("rotate", 0)) % 360


def iter_frames(path: str | Path, fps: float | None = None) -> Iterator[np.ndarray]:
    """Stream a video's or GIF's frames as RGB arrays, optionally resampled to a constant fps.

    The file is probed at once, so an unreadable file fails at the call; ffmpeg itself starts
    with the first frame requested and is killed if the caller stops iterating early.
    """
    info = probe(path)
    if not info.has_video:
        raise InvalidInput(f"{Path(path).name} has no video stream.")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return _stream_frames(Path(path), info.width, info.height, fps)


def _stream_frames(path: Path, width: int, height: int, fps: float | None) -> Iterator[np.ndarray]:
    command = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    if fps is not None:
        command += ["-vf", f"fps={fps}"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_size = width * height * 3
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None  # a pipe, as asked
    stdout, stderr = process.stdout, StderrTail(process)
    frames_read = 0
    try:
        while True:
            data = read_exactly(stdout, frame_size)
            # At "-v error" anything ffmpeg logs is a damaged packet or frame. It would carry on
            # past it with a grey or garbled picture, which must not become a template frame.
            if len(data) < frame_size or stderr.has_lines():
                break
            frames_read += 1
            yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
        if process.poll() is None and stderr.has_lines():
            process.kill()
        returncode = process.wait()
        stderr.join()
        if returncode != 0 or stderr.has_lines() or len(data) not in (0, frame_size):
            reason = stderr.last_line(path) or f"ffmpeg exited with code {returncode}"
            raise InvalidInput(f"{path.name} is damaged and cannot be decoded: {reason}")
        if frames_read == 0:
            raise InvalidInput(f"{path.name} contains no video frames.")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout.close()


@dataclass
class _Encoding:
    """The ffmpeg process a writer feeds while its `with` block runs."""

    process: subprocess.Popen
    stdin: IO[bytes]
    stderr: StderrTail


class _FrameWriter:
    """Streams RGB frames into one ffmpeg process that writes a file; subclasses say how.

    On an exception inside the `with` block ffmpeg is killed and the partial file removed, so
    a half-written file never looks like a result.
    """

    kind = "file"

    def __init__(self, path: str | Path, width: int, height: int, fps: float) -> None:
        if width <= 0 or height <= 0 or width > 65535 or height > 65535:
            raise ValueError(
                f"a {self.kind} must be 1 to 65535 pixels a side, not {width}x{height}"
            )
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_written = 0
        self._encoding: _Encoding | None = None

    def _output_arguments(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        command = [
            "ffmpeg", "-v", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{self.width}x{self.height}", "-framerate", str(self.fps), "-i", "pipe:0",
            *self._output_arguments(), str(self.path),
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert process.stdin is not None  # a pipe, as asked
        self._encoding = _Encoding(process, process.stdin, StderrTail(process))
        return self

    def write(self, frame: np.ndarray) -> None:
        encoding = self._encoding
        if encoding is None:
            raise RuntimeError(f"{type(self).__name__}.write() called outside its 'with' block")
        check_frame(frame, self.width, self.height)
        try:
            encoding.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            encoding.process.wait()
            raise self._failure(encoding) from None
        self.frames_written += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        encoding, self._encoding = self._encoding, None
        if encoding is None:
            return
        if exc_type is not None:
            encoding.process.kill()
            encoding.process.wait()
            self._close_pipes(encoding)
            self.path.unlink(missing_ok=True)
            return
        try:
            encoding.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg already stopped; its exit code and stderr say why
        returncode = encoding.process.wait()
        self._close_pipes(encoding)
        if self.frames_written == 0:
            self.path.unlink(missing_ok=True)
            raise RemindError(
                f"Could not write the {self.kind} {self.path.name}: it has no frames."
            )
        if returncode != 0:
            self.path.unlink(missing_ok=True)
            raise self._failure(encoding)

    @staticmethod
    def _close_pipes(encoding: _Encoding) -> None:
        encoding.stderr.join()
        if not encoding.stdin.closed:
            try:
                encoding.stdin.close()
            except BrokenPipeError:
                pass

    def _failure(self, encoding: _Encoding) -> RemindError:
        encoding.stderr.join()
        reason = encoding.stderr.last_line(self.path) or "ffmpeg stopped without a message"
        return RemindError(f"Could not write the {self.kind} {self.path.name}: {reason}")


class GifEncoder(_FrameWriter):
    """Write RGB frames into a looping GIF as they arrive.

    ffmpeg builds one palette from all frames (it holds them until the input ends, which is
    what a global palette needs), then dithers every frame against it.

        with GifEncoder(path, 320, 320, fps=12) as gif:
            for frame in frames:
                gif.write(frame)
    """

    kind = "GIF"

    def _output_arguments(self) -> list[str]:
        return ["-filter_complex", GIF_FILTER, "-loop", "0", "-f", "gif"]


class Mp4Encoder(_FrameWriter):
    """Write RGB frames into an H.264 MP4 as they arrive, muxed with an audio file as AAC.

    The video is as long as its frames: the audio is padded with silence or cut to fit.
    yuv420p and faststart, so that every phone and browser plays it while it downloads.

        with Mp4Encoder(path, 640, 480, fps=25, audio=voice_wav) as video:
            for frame in frames:
                video.write(frame)
    """

    kind = "video"

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        audio: Path | None = None,
    ) -> None:
        super().__init__(path, width, height, fps)
        self.audio = audio

    def _output_arguments(self) -> list[str]:
        audio = []
        if self.audio is not None:
            audio = [
                "-i",
                str(self.audio),
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-af",
                "apad",
                "-shortest",
                "-c:a",
                "aac",
                "-b:a",
                "128k",
            ]
        return [
            *audio,
            # H.264 in yuv420p needs even sides.
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4",
        ]  # fmt: skip
