"""Video and GIF through the ffmpeg command line, always streamed through a pipe one frame at
a time, so memory stays bounded by a frame or two whatever the length of the clip. Frames are
RGB uint8 arrays of shape (height, width, 3).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import numpy as np

from services.shared.errors import InvalidInput, RemindError
from services.shared.ffmpeg import StderrTail, ffprobe, last_line, read_exactly
from services.shared.images import check_frame

# The palette is built from every frame (in a moving-head template the whole picture moves, not
# just a small region) while the frames go to a lossless file on disk; a second pass dithers
# them against it, with error diffusion to keep skin gradients smooth. Neither pass holds more
# than a frame or two: the one-pass `split,palettegen,paletteuse` would hold the whole clip
# until its palette is ready (4 GB for 6 s of 1080p at 25 fps).
GIF_PALETTE_FILTER = "palettegen=stats_mode=full:reserve_transparent=0"
GIF_DITHER = "paletteuse=dither=sierra2_4a"
GIF_ONE_PASS_FILTER = (
    f"split[frames][stats];[stats]{GIF_PALETTE_FILTER}[palette];[frames][palette]{GIF_DITHER}"
)
# A clip up to this size, decoded, is encoded by one ffmpeg that holds it to build its palette
# (the fastest way); a larger one, or one of unknown length, goes through a lossless file.
GIF_ONE_PASS_MAX_BYTES = 64 * 1024 * 1024
GIF_DITHER_FILTER = f"[0:v][1:v]{GIF_DITHER}"


# Video packets read to measure a file's timing when the caller sets no limit of its own:
# over an hour at 25 fps, read in about a second.
MAX_MEASURED_FRAMES = 100_000


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds. Sizes are as displayed (rotation applied); a video's frame
    count, duration and fps are measured from its packets, never taken from its headers, and
    the count stops one past the limit the file was probed with (see `probe`)."""

    width: int
    height: int
    duration_seconds: float
    fps: float
    frame_count: int
    has_video: bool
    has_audio: bool
    format_name: str
    video_codec: str


def probe(path: str | Path, max_frames: int = MAX_MEASURED_FRAMES) -> MediaInfo:
    """Read a media file's streams with ffprobe; InvalidInput if it is not audio or video.

    Video timing is measured by reading at most `max_frames + 1` packets, so a frame count
    over `max_frames` means "more than that", and its duration and fps are then partial.
    """
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

    frame_count, duration = _measure_video(path, int(video.get("index", 0)), max_frames)
    fps = frame_count / duration if duration > 0 else 0.0
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


def _measure_video(path: str | Path, stream_index: int, max_frames: int) -> tuple[int, float]:
    """Frames and seconds of a video stream, from its packets' timestamps (demuxing only,
    nothing is decoded), reading at most `max_frames + 1` packets.

    Containers state a duration, a frame count and a frame rate in headers anyone can edit;
    the packets' timestamps are what a decoder plays.
    """
    report = ffprobe(
        path,
        "-select_streams", str(stream_index),
        "-read_intervals", f"%+#{max_frames + 1}",
        "-show_entries", "packet=pts_time,dts_time,duration_time",
    )  # fmt: skip
    starts, ends = [], []
    for packet in report.get("packets", []):
        start = _number(packet.get("pts_time"))
        if start is None:
            start = _number(packet.get("dts_time"))
        if start is not None:
            starts.append(start)
            ends.append(start + (_number(packet.get("duration_time")) or 0.0))
    frame_count = len(report.get("packets", []))
    if not starts:
        return frame_count, 0.0
    return frame_count, max(max(ends) - min(starts), 0.0)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # "N/A"
        return None


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
    else:
        # One frame per packet, as measured: never duplicated to fill a frame rate a header
        # may have made up.
        command += ["-fps_mode", "passthrough"]
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
        """ffmpeg's arguments after its input: filters, codecs and the file(s) written."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Work left once ffmpeg has written every frame; raises RemindError on failure."""

    def _remove_outputs(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        command = [
            "ffmpeg", "-v", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{self.width}x{self.height}", "-framerate", str(self.fps), "-i", "pipe:0",
            *self._output_arguments(),
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
            self._remove_outputs()
            return
        try:
            encoding.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg already stopped; its exit code and stderr say why
        returncode = encoding.process.wait()
        self._close_pipes(encoding)
        if self.frames_written == 0:
            self._remove_outputs()
            raise RemindError(
                f"Could not write the {self.kind} {self.path.name}: it has no frames."
            )
        if returncode != 0:
            self._remove_outputs()
            raise self._failure(encoding)
        try:
            self._finish()
        except BaseException:
            self._remove_outputs()
            raise

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

    A global palette needs every frame before the first is written. A short clip (`frames`
    given, at most GIF_ONE_PASS_MAX_BYTES decoded) is held by one ffmpeg that does it all. A
    longer one keeps memory bounded: frames stream into a lossless Ut Video file next to the
    GIF; when the `with` block ends, their palette is gathered from that file, then the file is
    dithered against it into the GIF. Both ways write the same bytes. (One ffmpeg with both
    the file and the palette as outputs would queue every frame until the clip ends.)

        with GifEncoder(path, 320, 320, fps=12) as gif:
            for frame in frames:
                gif.write(frame)
    """

    kind = "GIF"

    def __init__(self, path: str | Path, width: int, height: int, fps: float, frames: int = 0):
        super().__init__(path, width, height, fps)
        self.one_pass = 0 < width * height * 3 * frames <= GIF_ONE_PASS_MAX_BYTES

    @property
    def _frames_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.frames.mkv")

    @property
    def _palette_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.palette.png")

    def _output_arguments(self) -> list[str]:
        if self.one_pass:
            return ["-filter_complex", GIF_ONE_PASS_FILTER, "-loop", "0", "-f", "gif",
                    str(self.path)]  # fmt: skip
        return ["-c:v", "utvideo", "-f", "matroska", str(self._frames_path)]

    def _finish(self) -> None:
        if self.one_pass:
            return
        frames, palette = str(self._frames_path), str(self._palette_path)
        try:
            self._ffmpeg(["-i", frames, "-vf", GIF_PALETTE_FILTER, "-update", "1", palette])
            self._ffmpeg(
                ["-i", frames, "-i", palette, "-filter_complex", GIF_DITHER_FILTER,
                 "-loop", "0", "-f", "gif", str(self.path)]
            )  # fmt: skip
        finally:
            self._remove_intermediates()

    def _ffmpeg(self, arguments: list[str]) -> None:
        command = ["ffmpeg", "-v", "error", "-nostdin", "-y", *arguments]
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0:
            reason = last_line(result.stderr.decode(errors="replace"), self.path)
            reason = reason or f"ffmpeg exited with code {result.returncode}"
            raise RemindError(f"Could not write the GIF {self.path.name}: {reason}")

    def _remove_intermediates(self) -> None:
        self._frames_path.unlink(missing_ok=True)
        self._palette_path.unlink(missing_ok=True)

    def _remove_outputs(self) -> None:
        self._remove_intermediates()
        super()._remove_outputs()


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
            "-movflags", "+faststart", "-f", "mp4", str(self.path),
        ]  # fmt: skip
