"""Bad input through the public API gets a clear status, and nothing stored changes."""

import io
import struct
import zlib

import cv2
import grpc
import numpy as np
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.shared import media
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


def _png_header(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


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


def test_forged_giant_header_is_refused_without_decoding(client, unchanged_store):
    error = _gif_job(client, _png_header(100_000, 100_000) + b"\0" * 64, "bomb.png")
    assert error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)


def test_photo_without_a_face_is_failed_precondition(client, unchanged_store):
    error = _gif_job(client, media.encode_image(data.coffee(), "png"), "coffee.png")
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
    with media.GifEncoder(path, 320, 240, 10) as gif:
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


def test_out_of_order_chunk_is_refused_and_the_upload_survives(client, astronaut_png):
    upload = client.media.CreateUpload(
        media_pb2.CreateUploadRequest(
            content_type="image/png", filename="a.png", size_bytes=len(astronaut_png)
        )
    ).upload
    half = len(astronaut_png) // 2
    client.media.AppendUpload(
        media_pb2.AppendUploadRequest(upload=upload, offset=0, data=astronaut_png[:half])
    )
    error = _status(
        lambda: client.media.AppendUpload(
            media_pb2.AppendUploadRequest(upload=upload, offset=0, data=astronaut_png[:half])
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
