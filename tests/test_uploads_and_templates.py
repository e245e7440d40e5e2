"""Uploads (client stream, unary chunks, a form POST) and user templates, end to end."""

import urllib.request

import cv2
import grpc
import numpy as np
import pytest
import requests
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.shared import images, video


def _moving_face_gif(path, photo: np.ndarray, size: tuple[int, int], frames: int, fps: float):
    width, height = size
    base = cv2.resize(photo, (width, height))
    with video.GifEncoder(path, width, height, fps) as gif:
        for index in range(frames):
            shift = np.float32([[1, 0, 3 * np.sin(index / 3)], [0, 1, 2 * np.cos(index / 4)]])
            gif.write(cv2.warpAffine(base, shift, (width, height), borderMode=cv2.BORDER_REFLECT))


def _create_template(client: RemindClient, path, template_id: str) -> templates_pb2.Template:
    upload = client.upload(path.read_bytes(), path.name)
    return client.templates.CreateTemplate(
        templates_pb2.CreateTemplateRequest(
            media=upload.name, template_id=template_id, display_name="Mine"
        )
    ).template


def _post_form(form: media_pb2.UploadForm, data: bytes) -> requests.Response:
    # The file goes last: S3 reads the fields before it.
    return requests.post(form.url, data=dict(form.fields), files={"file": data}, timeout=30)


def test_form_upload_then_finish(client: RemindClient, astronaut_png: bytes):
    created = client.media.CreateUpload(
        media_pb2.CreateUploadRequest(
            content_type="image/png", filename="form.png", size_bytes=len(astronaut_png)
        )
    )
    assert _post_form(created.form, astronaut_png).status_code == 204
    finished = client.media.FinishUpload(media_pb2.FinishUploadRequest(upload=created.upload))
    assert finished.media.size_bytes == len(astronaut_png)
    assert client.download(finished.media.name) == astronaut_png
    url = client.media.GetMediaUrl(media_pb2.GetMediaUrlRequest(name=finished.media.name)).url
    with urllib.request.urlopen(url, timeout=30) as served:
        assert served.read() == astronaut_png
        assert served.headers["Content-Type"] == "image/png"


def test_the_form_takes_only_its_size_type_and_key(client: RemindClient, astronaut_png: bytes):
    created = client.media.CreateUpload(
        media_pb2.CreateUploadRequest(content_type="image/png", filename="a.png", size_bytes=100)
    )
    assert _post_form(created.form, astronaut_png).status_code in (400, 403)  # over its size
    as_html = dict(created.form.fields, **{"Content-Type": "text/html"})
    refused = requests.post(created.form.url, data=as_html, files={"file": b"<p>hi"}, timeout=30)
    assert refused.status_code == 403
    elsewhere = dict(created.form.fields, key="local/media/elsewhere.html")
    refused = requests.post(created.form.url, data=elsewhere, files={"file": b"x"}, timeout=30)
    assert refused.status_code == 403
    error = _status(
        lambda: client.media.FinishUpload(media_pb2.FinishUploadRequest(upload=created.upload))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_content_types_outside_the_allow_list_are_stored_as_bytes(client: RemindClient):
    page = b"<html><script>alert(1)</script></html>"
    stored = client.upload(page, "page.html", content_type="text/html")
    assert stored.content_type == "application/octet-stream"
    url = client.media.GetMediaUrl(media_pb2.GetMediaUrlRequest(name=stored.name)).url
    with urllib.request.urlopen(url, timeout=30) as served:
        assert served.headers["Content-Type"] == "application/octet-stream"


def test_uploaded_template_is_checked_then_used_for_a_job(
    client, user_photo, astronaut_png, tmp_path
):
    path = tmp_path / "mine.gif"
    _moving_face_gif(path, data.astronaut(), (256, 256), frames=24, fps=8)
    template = _create_template(client, path, "my-astronaut")
    assert template.name == "templates/my-astronaut" and not template.builtin
    assert template.frame_count == 24 and 2.5 < template.duration_seconds < 3.5
    assert "templates/my-astronaut" in [t.name for t in client.list_templates()]

    again = _status(lambda: _create_template(client, path, "my-astronaut"))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS

    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template.name)
    final = list(client.watch(job.name))[-1]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert final.result.frames_total == 24


def _status(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_template_longer_than_six_seconds_is_refused(client, tmp_path):
    path = tmp_path / "long.gif"
    _moving_face_gif(path, data.astronaut(), (160, 160), frames=80, fps=10)
    error = _status(lambda: _create_template(client, path, "too-long"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "6 s" in error.details()


def test_template_over_1080p_is_refused(client, tmp_path):
    path = tmp_path / "wide.gif"
    frame = np.full((1100, 2000, 3), 128, np.uint8)
    with video.GifEncoder(path, 2000, 1100, 5) as gif:
        for _ in range(10):
            gif.write(frame)
    error = _status(lambda: _create_template(client, path, "too-wide"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1080p" in error.details()


def test_a_running_job_can_be_cancelled(client, user_photo):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    job = client.create_gif_job(face.name, template)
    for event in client.watch(job.name):
        if event.progress.frames_done >= 2 and event.state == jobs_pb2.JOB_STATE_RUNNING:
            client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
        final = event
    assert final.state == jobs_pb2.JOB_STATE_CANCELLED
    assert not final.result.media
    assert client.get_job(job.name).state == jobs_pb2.JOB_STATE_CANCELLED


def test_watching_an_unknown_job_is_not_found(client):
    error = _status(lambda: list(client.watch("jobs/" + "a" * 32)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
