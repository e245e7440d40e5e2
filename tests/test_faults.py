"""Faults that really kill processes: jobs end completed or failed with a reason, never stuck."""

import os
import signal
import time

import cv2
import numpy as np
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.shared import media
from services.stack import LocalStack, pid_alive


def _long_template(client: RemindClient, tmp_path, template_id: str) -> str:
    """A 6 s, 20 fps GIF template: long enough to kill a service in the middle of it."""
    try:
        return client.templates.GetTemplate(
            templates_pb2.GetTemplateRequest(name=f"templates/{template_id}")
        ).template.name
    except Exception:  # noqa: BLE001 - not created yet
        pass
    path = tmp_path / f"{template_id}.gif"
    base = cv2.resize(data.astronaut(), (256, 256))
    with media.GifEncoder(path, 256, 256, 20) as gif:
        for index in range(118):
            shift = np.float32([[1, 0, 4 * np.sin(index / 5)], [0, 1, 3 * np.cos(index / 7)]])
            gif.write(cv2.warpAffine(base, shift, (256, 256), borderMode=cv2.BORDER_REFLECT))
    upload = client.upload(path.read_bytes(), path.name)
    return client.templates.CreateTemplate(
        templates_pb2.CreateTemplateRequest(media=upload.name, template_id=template_id)
    ).template.name


def test_killing_the_faceswap_service_mid_stream_is_survived(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    template = _long_template(client, tmp_path, "fault-long")
    face = client.upload(media.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template)
    killed = False
    for event in client.watch(job.name):
        if not killed and event.progress.frames_done >= 10:
            pid = stack.info().pids["faceswap"]
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
            killed = True
            stack.start()  # a supervisor bringing the service back
        final = event
    assert killed
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert final.result.frames_total == 118
    log = (stack.state_dir / "logs" / "orchestrator.log").read_text()
    assert "stream broke at frame" in log
    result = tmp_path / "result.gif"
    result.write_bytes(client.download(final.result.media))
    assert sum(1 for _ in media.iter_frames(result)) == 118


def test_a_dead_faceswap_service_fails_the_job_with_a_reason(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    template = _long_template(client, tmp_path, "fault-long")
    face = client.upload(media.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template)
    stopped = False
    for event in client.watch(job.name):
        if not stopped and event.progress.frames_done >= 10:
            os.kill(stack.info().pids["faceswap"], signal.SIGKILL)  # and nobody brings it back
            stopped = True
        final = event
    try:
        assert final.state == jobs_pb2.JOB_STATE_FAILED
        assert final.error.code == 14  # UNAVAILABLE
        assert "faceswap" in final.error.message and "retrying" in final.error.message
        assert not final.result.media
    finally:
        stack.start()
