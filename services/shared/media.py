"""Media codecs: still images through OpenCV, video and GIF through the ffmpeg command line.

Frames are RGB uint8 arrays of shape (height, width, 3) everywhere in Re:Mind. Video is always
streamed through a pipe, one frame at a time, so memory stays bounded by a frame or two whatever
the length of the clip.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Self

import cv2
import numpy as np

from services.shared.errors import InvalidInput, RemindError, TooLarge

SUPPORTED_PHOTO_FORMATS = "JPEG, PNG, GIF or WebP"

# Level 1 of 9: frames cross the network between services many times per job, so encode speed
# matters more than the last few percent of size.
PNG_COMPRESSION_LEVEL = 1

# ffprobe only reads headers (and, for GIF, counts packets), so anything slower than this is a
# pathological file rather than a large one.
PROBE_TIMEOUT_SECONDS = 30

# Error diffusion keeps skin gradients smooth; the palette is built from all frames because
# in a moving-head template the whole picture moves, not just a small region.
GIF_FILTER = (
    "split[frames][stats];"
    "[stats]palettegen=stats_mode=full:reserve_transparent=0[palette];"
    "[frames][palette]paletteuse=dither=sierra2_4a"
)


# ---------------------------------------------------------------------------------------------
# Still images
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    """What the first bytes of an image file say, read before any pixel is decoded."""

    format_name: str
    width: int
    height: int
    has_alpha: bool


def read_image_header(data: bytes) -> ImageHeader | None:
    """Dimensions of a JPEG, PNG, GIF or WebP image from its header; None if not recognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack_from("<HH", data, 6)
        return ImageHeader("gif", width, height, has_alpha=False)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    return None


def _png_header(data: bytes) -> ImageHeader | None:
    # The IHDR chunk must come first (PNG spec 5.6): length, type, width, height, depth, colour.
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    colour_type = data[25]
    # Colour types 4 and 6 are grey+alpha and RGBA.
    return ImageHeader("png", width, height, has_alpha=colour_type in (4, 6))


# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_header(data: bytes) -> ImageHeader | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (segment_length,) = struct.unpack_from(">H", data, offset + 2)
        if marker in _JPEG_SOF_MARKERS:
            if offset + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, offset + 5)
            return ImageHeader("jpeg", width, height, has_alpha=False)
        offset += 2 + segment_length
    return None


def _webp_header(data: bytes) -> ImageHeader | None:
    # Layouts from the WebP container specification (RFC 9649, section 2).
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, has_alpha=False)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("webp", width, height, has_alpha=bool(bits >> 28 & 1))
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height, has_alpha=bool(data[20] & 0x10))
    return None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode a photo to RGB, refusing it from its header alone if it has too many pixels.

    EXIF orientation is applied, greyscale is expanded to RGB and transparency is flattened
    onto white (a cut-out portrait should look like one on a plain background).
    """
    if not data:
        raise InvalidInput(f"The photo is empty: upload a {SUPPORTED_PHOTO_FORMATS} image.")
    header = read_image_header(data)
    if header is None:
        raise InvalidInput(
            f"The photo is not a {SUPPORTED_PHOTO_FORMATS} image, or its header is damaged."
        )
    if header.width == 0 or header.height == 0:
        raise InvalidInput("The photo header gives a size of zero pixels: the file is damaged.")
    if header.width * header.height > max_pixels:
        raise TooLarge(
            f"The photo is {header.width}x{header.height} "
            f"({header.width * header.height / 1e6:.1f} megapixels), over the limit of "
            f"{max_pixels / 1e6:.1f} megapixels: resize it and upload it again."
        )

    buffer = np.frombuffer(data, dtype=np.uint8)
    if header.has_alpha:
        # IMREAD_UNCHANGED keeps the alpha channel; the formats that carry one here (PNG,
        # WebP) rarely carry an EXIF orientation, which this flag would ignore.
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        image = None if decoded is None else _flatten_alpha(decoded)
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise InvalidInput(
            f"The photo looks like a {header.format_name.upper()} file but cannot be decoded: "
            "it is probably truncated or damaged."
        )
    return image


def _flatten_alpha(decoded: np.ndarray) -> np.ndarray:
    """RGB over a white background from whatever IMREAD_UNCHANGED returned (BGR order)."""
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    channels = decoded.shape[2]
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if channels == 2:
        colour = cv2.cvtColor(decoded[:, :, 0], cv2.COLOR_GRAY2RGB)
        alpha = decoded[:, :, 1]
    else:
        colour = cv2.cvtColor(decoded[:, :, :3], cv2.COLOR_BGR2RGB)
        alpha = decoded[:, :, 3]
    weight = alpha[:, :, np.newaxis].astype(np.float32) / 255.0
    flattened = colour.astype(np.float32) * weight + 255.0 * (1.0 - weight)
    return np.rint(flattened).astype(np.uint8)


def encode_image(image: np.ndarray, fmt: str = "png", jpeg_quality: int = 92) -> bytes:
    """Encode an RGB frame as PNG (lossless, fast) or JPEG."""
    _check_frame(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        options = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION_LEVEL]
        ok, encoded = cv2.imencode(".png", bgr, options)
    elif fmt in ("jpeg", "jpg"):
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        raise ValueError(f"unknown image format {fmt!r}: use 'png' or 'jpeg'")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} frame as {fmt}")
    return encoded.tobytes()


def _check_frame(frame: np.ndarray, width: int | None = None, height: int | None = None) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame, got {frame.dtype} {frame.shape}")
    if width is not None and frame.shape[:2] != (height, width):
        actual = f"{frame.shape[1]}x{frame.shape[0]}"
        raise ValueError(f"expected a {width}x{height} frame, got {actual}")


# ---------------------------------------------------------------------------------------------
# Video and GIF
# ---------------------------------------------------------------------------------------------


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
    report = _ffprobe(path, "-show_format", "-show_streams")
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


def _ffprobe(path: str | Path, *arguments: str) -> dict:
    command = ["ffprobe", "-v", "error", "-print_format", "json", *arguments, str(path)]
    try:
        result = subprocess.run(
            command, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise InvalidInput(
            f"{Path(path).name} took over {PROBE_TIMEOUT_SECONDS} s just to read its headers."
        ) from error
    if result.returncode != 0:
        reason = _last_line(result.stderr.decode(errors="replace"), path) or "unknown format"
        raise InvalidInput(f"{Path(path).name} is not a readable video or GIF: {reason}")
    return json.loads(result.stdout or b"{}")


def _count_video_packets(path: str | Path) -> int:
    # GIF and some streamed containers do not store a frame count; counting packets only
    # demuxes, it never decodes a frame.
    report = _ffprobe(
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
    stderr = _StderrTail(process)
    frames_read = 0
    try:
        while True:
            data = _read_exactly(process.stdout, frame_size)
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
        process.stdout.close()


def _read_exactly(stream, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


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
        self._process: subprocess.Popen | None = None
        self._stderr: _StderrTail | None = None

    def _output_arguments(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        command = [
            "ffmpeg", "-v", "error", "-nostdin", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{self.width}x{self.height}", "-framerate", str(self.fps), "-i", "pipe:0",
            *self._output_arguments(), str(self.path),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._stderr = _StderrTail(self._process)
        return self

    def write(self, frame: np.ndarray) -> None:
        if self._process is None:
            raise RuntimeError(f"{type(self).__name__}.write() called outside its 'with' block")
        _check_frame(frame, self.width, self.height)
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._process.wait()
            raise self._failure() from None
        self.frames_written += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        self._process = None
        if exc_type is not None:
            process.kill()
            process.wait()
            self._close_pipes(process)
            self.path.unlink(missing_ok=True)
            return
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg already stopped; its exit code and stderr say why
        returncode = process.wait()
        self._close_pipes(process)
        if self.frames_written == 0:
            self.path.unlink(missing_ok=True)
            raise RemindError(
                f"Could not write the {self.kind} {self.path.name}: it has no frames."
            )
        if returncode != 0:
            self.path.unlink(missing_ok=True)
            raise self._failure()

    def _close_pipes(self, process: subprocess.Popen) -> None:
        self._stderr.join()
        if not process.stdin.closed:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass

    def _failure(self) -> RemindError:
        self._stderr.join()
        reason = self._stderr.last_line(self.path) or "ffmpeg stopped without a message"
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

        with Mp4Encoder(path, 640, 480, fps=25, audio=voice_wav, comment="...") as video:
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
        comment: str = "",
    ) -> None:
        super().__init__(path, width, height, fps)
        self.audio = audio
        self.comment = comment

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
            "-movflags", "+faststart", "-metadata", f"comment={self.comment}", "-f", "mp4",
        ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# ffmpeg process plumbing
# ---------------------------------------------------------------------------------------------

# "[gif @ 0x55d0c0a8] Invalid data" -> "Invalid data": the address means nothing to a person.
_FFMPEG_CONTEXT_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
_MAX_REASON_LENGTH = 200


def _last_line(text: str, path: str | Path) -> str:
    """ffmpeg's last message, without the path: it names a temporary file nobody knows."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = _FFMPEG_CONTEXT_PREFIX.sub("", lines[-1])
    line = line.replace(f"{path}: ", "").replace(str(path), Path(path).name)
    return line[:_MAX_REASON_LENGTH]


class _StderrTail:
    """Drain a process's stderr in the background, keeping only its last lines.

    Without draining, a file that makes ffmpeg log an error per frame fills the pipe and the
    process stops, waiting for a reader, while we wait for its frames.
    """

    def __init__(self, process: subprocess.Popen, keep_lines: int = 20) -> None:
        self._lines: deque[str] = deque(maxlen=keep_lines)
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for raw_line in self._stream:
            self._lines.append(raw_line.decode(errors="replace"))
        self._stream.close()

    def join(self) -> None:
        self._thread.join()

    def has_lines(self) -> bool:
        return bool(self._lines)

    def last_line(self, path: str | Path) -> str:
        return _last_line("".join(self._lines), path)
