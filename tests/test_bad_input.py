"""Bad input through the public API gets a clear status, and nothing stored changes."""

import io
import struct
import time
import zlib

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.shared import images, video
from services.shared.errors import TooLarge
from services.shared.storage import ObjectStore

BUCKETS = ("remind-uploads", "remind-templates", "remind-results")


def _snapshot(store: ObjectStore) -> dict[str, bytes]:
    """Every stored object except records of uploads and media (new uploads add those)."""
    return {
        f"{bucket}/{key}": store.get_bytes(bucket, key)
        for bucket in ("remind-templates", "remind-results")
        for key in store.list_keys(bucket, "")
    }


def _status(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _gif_job(
    client: RemindClient, photo: bytes, filename: str = "photo.png", template: str = ""
) -> grpc.RpcError:
    template = template or client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    face = client.upload(photo, filename)
    return _status(lambda: client.create_gif_job(face.name, template))


# ---------------------------------------------------------------------------------------------
# Complete, decodable 64x64 photos whose headers are then forged to claim a giant size (the
# largest each format can state, or 100000 px a side for PNG). Without the header check the
# decoder would allocate for the claim, or give up on it, and the photo would come back as
# INVALID_ARGUMENT ("cannot be decoded"): only the check says RESOURCE_EXHAUSTED.


def _small_photo() -> np.ndarray:
    return cv2.resize(data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)


def _forged_png(width: int, height: int) -> bytes:
    png = bytearray(images.encode_image(_small_photo(), "png"))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # a valid IHDR checksum
    return bytes(png)


def _forged_jpeg(width: int, height: int) -> bytes:
    jpeg = bytearray(images.encode_image(_small_photo(), "jpeg"))
    start = jpeg.find(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    assert start > 0
    jpeg[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _forged_gif(width: int, height: int) -> bytes:
    # A one-frame GIF whose 64x64 image sits on a giant logical screen (a legal layout).
    buffer = io.BytesIO()
    Image.fromarray(_small_photo()).save(buffer, format="GIF")
    gif = bytearray(buffer.getvalue())
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def _forged_webp(width: int, height: int) -> bytes:
    ok, encoded = cv2.imencode(".webp", _small_photo(), [cv2.IMWRITE_WEBP_QUALITY, 90])
    assert ok
    webp = bytearray(encoded.tobytes())
    # A lossy (VP8) WebP: 14-bit width and height after the key frame's start code.
    assert webp[12:16] == b"VP8 " and webp[23:26] == b"\x9d\x01\x2a"
    webp[26:30] = struct.pack("<HH", width, height)
    return bytes(webp)


FORGED_PHOTOS = {
    "png": (_forged_png, 100_000, 100_000),
    "jpeg": (_forged_jpeg, 65_535, 65_535),
    "gif": (_forged_gif, 65_535, 65_535),
    "webp": (_forged_webp, 16_383, 16_383),
}


@pytest.fixture
def unchanged_store(store: ObjectStore):
    before = _snapshot(store)
    yield
    assert _snapshot(store) == before, "a refused request changed stored objects"


def test_not_an_image_is_invalid_argument(client, unchanged_store):
    error = _gif_job(client, b"this is a text file, not a photo", "notes.txt")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in error.details().lower()


def test_empty_upload_is_invalid_argument(client, unchanged_store):
    error = _status(lambda: client.upload(b"", "empty.png"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in error.details().lower()


def test_fifty_megapixel_photo_is_resource_exhausted(client, unchanged_store):
    # A real 50-megapixel PNG: blank pixels compress to a small upload.
    big = np.zeros((6100, 8200, 3), np.uint8)
    ok, encoded = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    error = _gif_job(client, encoded.tobytes(), "big.png")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "pixels" in error.details().lower() or "megapixel" in error.details().lower()


@pytest.mark.parametrize("fmt", list(FORGED_PHOTOS))
def test_forged_giant_header_is_refused_from_the_header_alone(fmt):
    forge, width, height = FORGED_PHOTOS[fmt]
    honest = forge(64, 64)
    assert images.decode_image(honest, 40_000_000).shape == (64, 64, 3), "the photo is complete"

    def no_decoding(*args: object) -> None:
        raise AssertionError(f"the {fmt} photo was decoded despite its header")

    forged = forge(width, height)
    header = images.read_image_header(forged)
    assert header is not None and (header.width, header.height) == (width, height)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images.cv2, "imdecode", no_decoding)
        with pytest.raises(TooLarge, match=f"{width}x{height}.*megapixels"):
            images.decode_image(forged, 40_000_000)


@pytest.mark.parametrize("fmt", list(FORGED_PHOTOS))
def test_forged_giant_header_is_resource_exhausted_through_the_api(client, fmt, unchanged_store):
    forge, width, height = FORGED_PHOTOS[fmt]
    template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    face = client.upload(forge(width, height), f"bomb.{fmt}")
    started = time.monotonic()
    error = _status(lambda: client.create_gif_job(face.name, template))
    elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    # Only the header check knows the declared size; a failed decode cannot report it.
    assert f"{width}x{height}" in error.details() and "megapixels" in error.details()
    assert elapsed < 10, f"refusing a {fmt} header took {elapsed:.1f} s"


def test_photo_without_a_face_is_failed_precondition(client, unchanged_store):
    error = _gif_job(client, images.encode_image(data.coffee(), "png"), "coffee.png")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "face" in error.details().lower()


def test_unknown_template_is_not_found(client, astronaut_png, unchanged_store):
    error = _gif_job(client, astronaut_png, template="templates/no-such-template")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "templates/no-such-template" in error.details()


def test_malformed_names_are_invalid_argument(client, unchanged_store):
    error = _status(lambda: client.get_job("jobs/../../etc"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = _status(lambda: client.get_job("jobs/" + "0" * 32))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_corrupt_gif_template_is_invalid_argument(client, unchanged_store):
    gif = io.BytesIO()
    gif.write(b"GIF89a" + bytes(range(256)) * 20)
    upload = client.upload(gif.getvalue(), "broken.gif")
    error = _status(
        lambda: client.templates.CreateTemplate(
            templates_pb2.CreateTemplateRequest(media=upload.name, template_id="broken")
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_template_without_a_face_is_failed_precondition(client, tmp_path, unchanged_store):
    path = tmp_path / "coffee.gif"
    frame = cv2.resize(data.coffee(), (320, 240))
    with video.GifEncoder(path, 320, 240, 10) as gif:
        for shift in range(20):
            gif.write(np.roll(frame, shift * 3, axis=1))
    upload = client.upload(path.read_bytes(), "coffee.gif")
    error = _status(
        lambda: client.templates.CreateTemplate(
            templates_pb2.CreateTemplateRequest(media=upload.name, template_id="coffee-cup")
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "face" in error.details().lower()


def test_upload_over_the_size_limit_is_resource_exhausted(client, unchanged_store):
    error = _status(
        lambda: client.media.CreateUpload(
            media_pb2.CreateUploadRequest(
                content_type="image/png", filename="huge.png", size_bytes=200 * 1024 * 1024
            )
        )
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    too_big = b"\0" * (51 * 1024 * 1024)
    error = _status(lambda: client.upload(too_big, "huge.bin"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MiB" in error.details()


def test_another_chunk_at_a_taken_offset_is_refused_and_the_upload_survives(
    client, astronaut_png
):
    upload = client.media.CreateUpload(
        media_pb2.CreateUploadRequest(
            content_type="image/png", filename="a.png", size_bytes=len(astronaut_png)
        )
    ).upload
    half = len(astronaut_png) // 2
    client.media.AppendUpload(
        media_pb2.AppendUploadRequest(upload=upload, offset=0, data=astronaut_png[:half])
    )
    retried = client.media.AppendUpload(
        media_pb2.AppendUploadRequest(upload=upload, offset=0, data=astronaut_png[:half])
    )
    assert retried.received_bytes == half  # a retry is acknowledged again, not appended
    error = _status(
        lambda: client.media.AppendUpload(
            media_pb2.AppendUploadRequest(upload=upload, offset=0, data=astronaut_png[1 : half + 1])
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.media.AppendUpload(
        media_pb2.AppendUploadRequest(upload=upload, offset=half, data=astronaut_png[half:])
    )
    finished = client.media.FinishUpload(media_pb2.FinishUploadRequest(upload=upload)).media
    assert client.download(finished.name) == astronaut_png


def test_cancel_of_a_finished_job_is_failed_precondition(client, astronaut_png):
    face = client.upload(astronaut_png, "a.png")
    template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    job = client.create_gif_job(face.name, template)
    final = list(client.watch(job.name))[-1]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED
    error = _status(lambda: client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
