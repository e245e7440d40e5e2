"""Faults that really kill processes: jobs end completed or failed with a reason, never stuck."""

import os
import signal
import time

from remind.v1 import job_service_pb2 as jobs_pb2

from services.client import RemindClient
from services.shared import images, video
from services.stack import LocalStack
from tests.support.faults import kill_hard, long_gif_template


def _long_template(client: RemindClient, tmp_path, template_id: str) -> str:
    """A 6 s, 20 fps GIF template: long enough to kill a service in the middle of it."""
    return long_gif_template(client, tmp_path, template_id)


def test_killing_the_faceswap_service_mid_stream_is_survived(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    template = _long_template(client, tmp_path, "fault-long")
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template)
    killed = False
    for event in client.watch(job.name):
        if not killed and event.progress.frames_done >= 10:
            kill_hard(stack, "faceswap")
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
    assert sum(1 for _ in video.iter_frames(result)) == 118


def test_a_dead_faceswap_service_fails_the_job_with_a_reason(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    template = _long_template(client, tmp_path, "fault-long")
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
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


def test_an_orchestrator_killed_mid_job_finishes_the_job_when_it_comes_back(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path
):
    template = _long_template(client, tmp_path, "fault-long")
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template)
    for event in client.watch(job.name):
        if event.progress.frames_done >= 10:
            break
    kill_hard(stack, "orchestrator")
    info = stack.start()
    with RemindClient(info.orchestrator_address, info.api_keys["local"]) as again:
        ended = list(again.watch(job.name))[-1]
        assert ended.state == jobs_pb2.JOB_STATE_SUCCEEDED, ended.error.message
        assert ended.result.frames_total == 118


def test_a_store_outage_during_a_job_ends_the_job_and_the_store_comes_back_intact(
    stack: LocalStack, client: RemindClient, user_photo, tmp_path, store
):
    template = _long_template(client, tmp_path, "fault-long")
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, template)
    stopped = False
    try:
        for event in client.watch(job.name):
            if not stopped and event.progress.frames_done >= 10:
                stack.stop("s3")
                stopped = True
            final = event
    finally:
        stack.start()
    assert stopped
    # Without the store the result cannot be kept: the job says so instead of hanging.
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert final.error.code == 14 and "storage" in final.error.message
    # Once the store is back the job's ended record reaches it, and work goes on.
    deadline = time.monotonic() + 30
    while client.get_job(job.name).state != jobs_pb2.JOB_STATE_FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job_id = job.name.split("/")[1]
    while True:
        record = store.get_record("remind-records", f"local/jobs/{job_id}.json")
        if record["job"]["state"] == "JOB_STATE_FAILED":
            break
        assert time.monotonic() < deadline, "the ended job's record never reached the store"
        time.sleep(0.5)
    # Nothing of the job stays in the results bucket (its saved work goes just after its end).
    while store.list_keys("remind-results", f"local/{job_id}/"):
        assert time.monotonic() < deadline, "the failed job's saved work stayed"
        time.sleep(0.5)
    retried = client.create_gif_job(face.name, template)
    assert list(client.watch(retried.name))[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
