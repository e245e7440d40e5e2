"""Photos as phones take them: HEIC (iPhones) and AVIF, made by real encoders (libheif's x265
through pillow-heif, libaom through Pillow and through ffmpeg), decoded in this process and
through the real stack; damaged and forged ones refused with a clear status, before decoding.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import pillow_heif
import pytest
from PIL import Image
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc, media_pb2
from remind.v1 import job_service_pb2 as jobs_pb2
from skimage import data

from services.client import RemindClient
from services.samples import sample_face_photo
from services.shared import images
from services.shared.errors import InvalidInput, TooLarge
from services.stack import LocalStack
from tests.support.memory import MIB, PeakMemory

# EXIF orientation 6: the pixels are stored turned a quarter to the left, as a phone held
# upright stores them; encoders write it as the file's `irot`.
TURN_RIGHT = 6
# What refusing a photo from its header may add to the faceswap server.
REFUSAL_BOUND = 64 * MIB
TIMEOUT = 120


def _orientation(turn: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = turn
    return exif.tobytes()


def heic(pixels: np.ndarray, turn: int = 1, grid_tile: int = 0) -> bytes:
    """A HEIC by libheif and x265, split into tiles of `grid_tile` as iPhones do when set."""
    previous = pillow_heif.options.GRID_TILE_SIZE
    pillow_heif.options.GRID_TILE_SIZE = grid_tile
    try:
        encoded = io.BytesIO()
        pillow_heif.from_pillow(Image.fromarray(pixels)).save(
            encoded, quality=85, exif=_orientation(turn)
        )
    finally:
        pillow_heif.options.GRID_TILE_SIZE = previous
    return encoded.getvalue()


def avif(pixels: np.ndarray, turn: int = 1) -> bytes:
    """An AVIF by libavif and libaom, through Pillow."""
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "AVIF", quality=85, speed=8, exif=_orientation(turn))
    return encoded.getvalue()


def ffmpeg_avif(pixels: np.ndarray, work: Path) -> bytes:
    """An AVIF by ffmpeg's own muxer and libaom: another writer's box layout."""
    source, target = work / "photo.png", work / "photo.avif"
    source.write_bytes(images.encode_image(pixels, "png"))
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(source),
         "-c:v", "libaom-av1", "-still-picture", "1", "-crf", "20", "-cpu-used", "8",
         str(target)],
        check=True,
    )  # fmt: skip
    return target.read_bytes()


def _with_every(data: bytes, box: bytes, rewrite: Callable[[bytearray, int], None]) -> bytes:
    forged = bytearray(data)
    for found in re.finditer(re.escape(box), data):
        rewrite(forged, found.end())
    return bytes(forged)


def claiming(data: bytes, width: int, height: int) -> bytes:
    """The file with every `ispe` (full box: version and flags, then width and height)
    rewritten to claim another size."""

    def rewrite(forged: bytearray, payload: int) -> None:
        forged[payload + 4 : payload + 12] = struct.pack(">II", width, height)

    return _with_every(data, b"ispe", rewrite)


def grid_claiming(data: bytes, width: int, height: int) -> bytes:
    """A tiled HEIC whose grid (in `idat`: version, flags, rows, columns, 16-bit output size)
    claims another canvas, its `ispe` left as it was."""

    def rewrite(forged: bytearray, payload: int) -> None:
        forged[payload + 4 : payload + 8] = struct.pack(">HH", width, height)

    return _with_every(data, b"idat", rewrite)


@functools.cache
def face() -> np.ndarray:
    return sample_face_photo(0)


def _difference(decoded: np.ndarray, original: np.ndarray) -> float:
    return float(np.abs(decoded.astype(np.int16) - original.astype(np.int16)).mean())


# --- Decoding in this process ------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["heic", "avif", "ffmpeg-avif"])
def test_heic_and_avif_photos_decode_to_the_photo_taken(encoder: str, tmp_path: Path) -> None:
    photo = data.astronaut()
    encoded = {
        "heic": lambda: heic(photo),
        "avif": lambda: avif(photo),
        "ffmpeg-avif": lambda: ffmpeg_avif(photo, tmp_path),
    }[encoder]()
    header = images.read_image_header(encoded)
    assert header is not None
    assert (header.format_name, header.width, header.height) == (encoder[-4:], 512, 512)
    decoded = images.decode_image(encoded, max_pixels=10**6)
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    assert _difference(decoded, photo) < 6, "lossy, but the same picture"


@pytest.mark.parametrize("encode", [heic, avif], ids=["heic", "avif"])
def test_the_rotation_the_camera_recorded_is_applied(encode: Callable[..., bytes]) -> None:
    upright = data.astronaut()[:, 64:448]  # 384 wide, 512 high: portrait
    stored = np.ascontiguousarray(np.rot90(upright))  # turned left, as the sensor saw it
    decoded = images.decode_image(encode(stored, turn=TURN_RIGHT), max_pixels=10**6)
    assert decoded.shape == upright.shape
    assert _difference(decoded, upright) < 6


@pytest.mark.parametrize("encode", [heic, avif], ids=["heic", "avif"])
def test_transparency_is_flattened_onto_white(encode: Callable[..., bytes]) -> None:
    photo = data.astronaut()
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :128] = 0  # the left quarter cut out
    encoded = encode(np.dstack([photo, alpha]))
    header = images.read_image_header(encoded)
    assert header is not None and header.has_alpha
    decoded = images.decode_image(encoded, max_pixels=10**6)
    assert decoded.shape == photo.shape
    assert decoded[:, :120].mean() > 250, "cut-out parts are white"
    assert _difference(decoded[:, 136:], photo[:, 136:]) < 6


@pytest.mark.parametrize("encode", [heic, avif], ids=["heic", "avif"])
def test_a_forged_giant_size_is_refused_from_the_header(encode: Callable[..., bytes]) -> None:
    forged = claiming(encode(face()), 60000, 60000)
    with pytest.raises(TooLarge, match="60000x60000"):
        images.decode_image(forged, max_pixels=40_000_000)


def test_a_forged_grid_canvas_is_refused_from_the_header() -> None:
    """libheif draws a grid's tiles on a canvas of the size the grid data gives, which its
    `ispe` need not repeat."""
    tiled = heic(data.astronaut(), grid_tile=256)
    assert images.decode_image(tiled, max_pixels=10**6).shape == (512, 512, 3)
    with pytest.raises(TooLarge, match="60000x60000"):
        images.decode_image(grid_claiming(tiled, 60000, 60000), max_pixels=40_000_000)


def test_an_av1_frame_larger_than_its_declared_size_is_refused_before_decoding() -> None:
    """libavif decodes the frame its sequence header gives whatever `ispe` says (it then
    returns the small picture): the header check reads the sequence header too."""
    understated = claiming(avif(data.astronaut()), 64, 64)
    with pytest.raises(TooLarge, match="512x512"):
        images.decode_image(understated, max_pixels=100_000)


def test_a_truncated_heic_is_invalid_input_saying_so() -> None:
    whole = heic(face())
    with pytest.raises(InvalidInput, match="looks like a HEIC file but cannot be decoded"):
        images.decode_image(whole[: len(whole) // 2], max_pixels=10**6)
    with pytest.raises(InvalidInput, match="header is damaged"):
        images.decode_image(whole[:200], max_pixels=10**6)  # cut inside its item list


def test_a_truncated_avif_is_invalid_input() -> None:
    whole = avif(face())
    with pytest.raises(InvalidInput):
        images.decode_image(whole[: len(whole) // 2], max_pixels=10**6)


def test_an_mp4_is_still_not_a_photo(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10",
         "-t", "0.3", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="is not a JPEG, PNG, HEIC, AVIF, GIF or WebP image"):
        images.decode_image(clip.read_bytes(), max_pixels=10**6)


# --- Through the stack -------------------------------------------------------------------------


def _status(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_gif_jobs_from_a_heic_and_an_avif_photo_succeed(client: RemindClient) -> None:
    # The HEIC is stored sideways with its turn recorded: the detector finds no face in the
    # photo unless the turn is applied.
    sideways = np.ascontiguousarray(np.rot90(face()))
    uploads = [
        client.upload(heic(sideways, turn=TURN_RIGHT), "portrait.heic"),
        client.upload(avif(face()), "portrait.avif"),
    ]
    assert [upload.content_type for upload in uploads] == ["image/heic", "image/avif"]
    created = [client.create_gif_job(upload.name, "templates/astronaut-sway") for upload in uploads]
    for job in created:
        final = list(client.watch(job.name, timeout=600))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        assert final.result.frames_with_face >= 0.9 * final.result.frames_total


def test_a_truncated_heic_is_refused_with_invalid_argument(client: RemindClient) -> None:
    whole = heic(face())
    cut = client.upload(whole[: len(whole) // 2], "cut.heic")
    error = _status(lambda: client.create_gif_job(cut.name, "templates/astronaut-sway"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "HEIC" in error.details() and "truncated" in error.details(), error.details()


def test_a_heic_claiming_a_giant_size_is_refused_before_decoding(
    client: RemindClient, stack: LocalStack
) -> None:
    forged = client.upload(claiming(heic(face()), 60000, 60000), "giant.heic")
    with PeakMemory(stack.start().pids["faceswap"]) as memory:
        error = _status(lambda: client.create_gif_job(forged.name, "templates/astronaut-sway"))
    print(f"HEIC claiming 60000x60000: {error.code().name}; {memory.report()}")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "60000x60000" in error.details(), error.details()
    assert memory.growth < REFUSAL_BOUND, memory.report()


def test_a_12_megapixel_avif_decodes_within_its_budgeted_memory(stack: LocalStack) -> None:
    """The budget a HEIC or AVIF decode reserves is what the faceswap server really takes."""
    photo = cv2.resize(data.astronaut(), (4032, 3024), interpolation=cv2.INTER_CUBIC)
    encoded = avif(photo)
    header = images.read_image_header(encoded)
    assert header is not None and header.pixels == 4032 * 3024
    info = stack.start()
    options = [("grpc.max_send_message_length", 64 * MIB)]
    with grpc.insecure_channel(info.address("faceswap"), options=options) as channel:
        faceswap = faceswap_pb2_grpc.FaceSwapServiceStub(channel)
        request = faceswap_pb2.PrepareIdentityRequest(photo=media_pb2.EncodedImage(data=encoded))
        with PeakMemory(info.pids["faceswap"]) as memory:
            identity = faceswap.PrepareIdentity(request, timeout=TIMEOUT).identity
    print(f"12-megapixel AVIF: budget {header.decode_bytes() / MIB:.0f} MiB; {memory.report()}")
    assert identity.engine
    # The face detector's own working copies come on top of the decode.
    assert memory.growth < header.decode_bytes() + 64 * MIB, memory.report()
