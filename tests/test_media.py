"""Media codecs against the real ffmpeg and OpenCV: no mocks."""

from __future__ import annotations

import os
import struct
import subprocess
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.shared import images, video
from services.shared.errors import InvalidInput, RemindError, TooLarge

GIF_WIDTH, GIF_HEIGHT, GIF_FPS, GIF_FRAMES = 320, 240, 12, 36


def moving_disc_frames() -> list[np.ndarray]:
    """A disc crossing a colour gradient: smooth areas and a sharp moving edge."""
    rows, columns = np.mgrid[0:GIF_HEIGHT, 0:GIF_WIDTH]
    frames = []
    for index in range(GIF_FRAMES):
        frame = np.empty((GIF_HEIGHT, GIF_WIDTH, 3), np.uint8)
        frame[..., 0] = columns * 255 // (GIF_WIDTH - 1)
        frame[..., 1] = 80
        frame[..., 2] = rows * 255 // (GIF_HEIGHT - 1)
        centre_x = 40 + 7 * index
        frame[(columns - centre_x) ** 2 + (rows - 120) ** 2 < 30**2] = (240, 220, 40)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def source_frames() -> list[np.ndarray]:
    return moving_disc_frames()


@pytest.fixture(scope="module")
def gif_path(tmp_path_factory: pytest.TempPathFactory, source_frames: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("gif") / "moving-disc.gif"
    with video.GifEncoder(path, GIF_WIDTH, GIF_HEIGHT, GIF_FPS) as gif:
        for frame in source_frames:
            gif.write(frame)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def ffmpeg_children() -> list[int]:
    """Process ids of this test process's ffmpeg children, zombies included."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == os.getpid() and name.startswith("ffmpeg"):
            children.append(int(entry.name))
    return children


# --- still images ----------------------------------------------------------------------------


def test_png_round_trip_is_lossless(source_frames: list[np.ndarray]) -> None:
    frame = source_frames[5]
    decoded = images.decode_image(images.encode_image(frame, "png"), max_pixels=10**6)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, frame)


def test_jpeg_round_trip_keeps_the_colours(source_frames: list[np.ndarray]) -> None:
    frame = source_frames[5]
    encoded = images.encode_image(frame, "jpeg", jpeg_quality=92)
    assert encoded[:2] == b"\xff\xd8"
    decoded = images.decode_image(encoded, max_pixels=10**6)
    assert decoded.shape == frame.shape
    assert np.abs(decoded.astype(int) - frame).mean() < 3


def test_encode_image_rejects_an_unknown_format(source_frames: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown image format"):
        images.encode_image(source_frames[0], "bmp")


def test_empty_photo_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="The photo is empty"):
        images.decode_image(b"", max_pixels=10**6)


def test_random_bytes_are_not_a_photo() -> None:
    noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidInput, match="not a JPEG, PNG, HEIC, AVIF, GIF or WebP"):
        images.decode_image(noise, max_pixels=10**6)


def test_truncated_png_is_invalid_input(source_frames: list[np.ndarray]) -> None:
    encoded = images.encode_image(source_frames[0], "png")
    with pytest.raises(InvalidInput, match="truncated or damaged"):
        images.decode_image(encoded[: len(encoded) // 2], max_pixels=10**6)


def test_forged_png_header_is_refused_before_decoding() -> None:
    # 20000x20000 RGB would need 1.2 GB once decoded; the file itself is a few dozen bytes.
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TooLarge, match=r"20000x20000 \(400.0 megapixels\).*40.0 megapixels"):
            images.decode_image(bomb, max_pixels=40_000_000)
        elapsed = time.perf_counter() - started
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.05
    assert peak_bytes < 1_000_000


def test_fifty_megapixel_photo_is_too_large_for_a_forty_megapixel_limit() -> None:
    ok, encoded = cv2.imencode(".png", np.zeros((6500, 8000, 3), np.uint8))
    assert ok
    started = time.perf_counter()
    with pytest.raises(TooLarge, match="8000x6500"):
        images.decode_image(encoded.tobytes(), max_pixels=40_000_000)
    assert time.perf_counter() - started < 0.05


def test_exif_orientation_is_applied_to_jpegs() -> None:
    # Landscape 60x40 with a marked top-left corner, tagged "rotate 90 clockwise" (orientation 6).
    image = np.zeros((40, 60, 3), np.uint8)
    image[:10, :10] = (250, 0, 0)
    jpeg = images.encode_image(image, "jpeg")
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\0\0\0\0"
    exif = b"Exif\0\0" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    tagged = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]

    decoded = images.decode_image(tagged, max_pixels=10**6)

    assert decoded.shape == (60, 40, 3)
    assert decoded[2, -3, 0] > 200  # the marked corner is now top-right
    assert decoded[2, 2, 0] < 50


def test_greyscale_photo_becomes_rgb() -> None:
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))
    ok, encoded = cv2.imencode(".png", grey)
    decoded = images.decode_image(encoded.tobytes(), max_pixels=10**6)
    assert decoded.shape == (30, 50, 3)
    np.testing.assert_array_equal(decoded[..., 0], grey)
    np.testing.assert_array_equal(decoded[..., 2], grey)


def test_transparent_pixels_are_flattened_onto_white() -> None:
    bgra = np.zeros((10, 10, 4), np.uint8)
    bgra[..., 2] = 255  # red
    bgra[:5, :, 3] = 255  # top half opaque, bottom half transparent
    ok, encoded = cv2.imencode(".png", bgra)
    decoded = images.decode_image(encoded.tobytes(), max_pixels=10**6)
    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[9, 9].tolist() == [255, 255, 255]


def test_headers_give_the_size_of_each_supported_format(source_frames: list[np.ndarray]) -> None:
    bgr = cv2.cvtColor(source_frames[0], cv2.COLOR_RGB2BGR)
    for extension, params in ((".png", []), (".jpg", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
                              (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):  # fmt: skip
        ok, encoded = cv2.imencode(extension, bgr, params)
        header = images.read_image_header(encoded.tobytes())
        assert (header.width, header.height) == (GIF_WIDTH, GIF_HEIGHT), extension


# --- video and GIF ---------------------------------------------------------------------------


def test_gif_probes_back_with_its_size_frames_and_duration(gif_path: Path) -> None:
    info = video.probe(gif_path)
    assert (info.width, info.height) == (GIF_WIDTH, GIF_HEIGHT)
    assert info.frame_count == GIF_FRAMES
    assert info.duration_seconds == pytest.approx(3.0, abs=0.1)
    assert info.fps == pytest.approx(GIF_FPS, abs=0.1)
    assert info.has_video and not info.has_audio
    assert (info.format_name, info.video_codec) == ("gif", "gif")


def test_gif_frames_come_back_close_to_the_originals(
    gif_path: Path, source_frames: list[np.ndarray]
) -> None:
    frames = list(video.iter_frames(gif_path))
    assert len(frames) == GIF_FRAMES
    for decoded, original in zip(frames, source_frames, strict=True):
        assert decoded.shape == original.shape and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - original).mean() < 6


def test_iter_frames_resamples_to_the_requested_fps(gif_path: Path) -> None:
    assert sum(1 for _ in video.iter_frames(gif_path, fps=6)) == GIF_FRAMES // 2


def test_gif_loops_forever(gif_path: Path) -> None:
    # NETSCAPE2.0 application extension with a loop count of 0.
    assert b"NETSCAPE2.0\x03\x01\x00\x00" in gif_path.read_bytes()


def test_probe_reads_video_with_audio(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=25:d=1",
         "-f", "lavfi", "-i", "sine=d=1", "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )  # fmt: skip
    info = video.probe(path)
    assert (info.width, info.height, info.frame_count) == (160, 120, 25)
    assert info.has_video and info.has_audio
    assert info.video_codec == "mpeg4" and "mp4" in info.format_name
    assert info.fps == pytest.approx(25)


def test_probe_refuses_a_file_that_is_not_media(tmp_path: Path) -> None:
    path = tmp_path / "notes.gif"
    path.write_text("not a gif at all\n" * 100)
    with pytest.raises(InvalidInput, match="notes.gif is not a readable video or GIF"):
        video.probe(path)


def test_iter_frames_refuses_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.gif"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidInput):
        video.iter_frames(path)


def test_iter_frames_raises_when_decoding_fails_mid_stream(gif_path: Path, tmp_path: Path) -> None:
    data = bytearray(gif_path.read_bytes())
    middle = len(data) // 2
    noise = np.random.default_rng(5).integers(0, 256, 4000, np.uint8).tobytes()
    data[middle : middle + len(noise)] = noise
    damaged = tmp_path / "damaged.gif"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="damaged.gif is damaged") as raised:
        for _ in video.iter_frames(damaged):
            pass
    assert "@ 0x" not in str(raised.value) and str(tmp_path) not in str(raised.value)


def test_closing_the_frame_stream_early_stops_ffmpeg(gif_path: Path) -> None:
    frames = video.iter_frames(gif_path)
    next(frames)
    next(frames)
    assert len(ffmpeg_children()) == 1
    frames.close()
    assert ffmpeg_children() == []


def test_a_short_clip_is_encoded_in_one_pass_and_writes_the_same_bytes(
    gif_path: Path, source_frames: list[np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "one-pass.gif"
    encoder = video.GifEncoder(path, GIF_WIDTH, GIF_HEIGHT, GIF_FPS, len(source_frames))
    assert encoder.one_pass
    with encoder as gif:
        for frame in source_frames:
            gif.write(frame)
    assert path.read_bytes() == gif_path.read_bytes()  # the file-based way, as gif_path is
    assert sorted(tmp_path.iterdir()) == [path]
    large = video.GifEncoder(tmp_path / "large.gif", 1920, 1080, 25, 100)
    assert not large.one_pass  # 600 MiB decoded: through a lossless file


def test_gif_encoder_removes_the_partial_file_when_the_caller_fails(tmp_path: Path) -> None:
    path = tmp_path / "partial.gif"
    with pytest.raises(KeyError):
        with video.GifEncoder(path, 64, 48, 10) as gif:
            gif.write(np.zeros((48, 64, 3), np.uint8))
            raise KeyError("caller failed")
    assert not path.exists()
    assert ffmpeg_children() == []


def test_gif_encoder_failure_is_a_domain_error_with_ffmpeg_reason(tmp_path: Path) -> None:
    path = tmp_path / "missing-folder" / "out.gif"
    with pytest.raises(RemindError, match=r"out\.gif\S*: No such file or directory") as raised:
        with video.GifEncoder(path, 64, 48, 10) as gif:
            gif.write(np.zeros((48, 64, 3), np.uint8))
    assert str(tmp_path) not in str(raised.value)


def test_gif_encoder_rejects_a_frame_of_the_wrong_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a 64x48 frame"):
        with video.GifEncoder(tmp_path / "out.gif", 64, 48, 10) as gif:
            gif.write(np.zeros((64, 48, 3), np.uint8))
    assert not (tmp_path / "out.gif").exists()


def test_gif_encoder_with_no_frames_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RemindError, match="no frames"):
        with video.GifEncoder(tmp_path / "empty.gif", 64, 48, 10):
            pass
    assert not (tmp_path / "empty.gif").exists()
