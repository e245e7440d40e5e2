"""Load and back-pressure on this 2-core box: many jobs at once complete, memory stays bounded,
a full queue refuses new work with a retry hint, and cancelling frees a place at once."""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services import samples as mixes
from services.client import RemindClient
from services.shared import images
from services.stack import LocalStack
from tests.support.memory import PeakResidentMemory

GIF_JOBS, VIDEO_JOBS = 20, 4


def _run_jobs(client: RemindClient, create, count: int) -> list[jobs_pb2.Job]:  # type: ignore[no-untyped-def]
    def one(_: int) -> jobs_pb2.Job:
        job = create()
        return list(client.watch(job.name))[-1]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_twenty_gif_jobs_and_four_video_jobs_at_once_complete_in_bounded_memory(
    stack: LocalStack, client: RemindClient, user_photo
):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png").name
    voice = client.upload(mixes.wav_bytes(mixes.make_mix("en-us", 6.0).mixture), "v.wav").name
    gif = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    video = client.list_templates(templates_pb2.TEMPLATE_KIND_VIDEO)[0].name
    pids = {
        name: pid
        for name, pid in stack.info().pids.items()
        if name in ("orchestrator", "faceswap", "lipsync", "voice")
    }
    with PeakResidentMemory(pids) as memory, ThreadPoolExecutor(2) as both:
        gifs = both.submit(_run_jobs, client, lambda: client.create_gif_job(face, gif), GIF_JOBS)
        videos = both.submit(
            _run_jobs, client, lambda: client.create_video_job(face, voice, video), VIDEO_JOBS
        )
        finished = gifs.result(timeout=900) + videos.result(timeout=900)
    states = [job.state for job in finished]
    assert states.count(jobs_pb2.JOB_STATE_SUCCEEDED) == GIF_JOBS + VIDEO_JOBS, [
        job.error.message for job in finished if job.error.message
    ]
    peaks = {name: round(peak / 2**20) for name, peak in memory.peak.items()}
    print(f"peak resident memory (MiB): {peaks}")
    # Frames stream through every stage: no process holds a whole video.
    assert peaks["orchestrator"] < 1024
    assert all(peak < 3072 for peak in peaks.values())


def test_a_full_queue_refuses_with_a_retry_hint_and_cancelling_frees_a_place(
    client: RemindClient, user_photo
):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png").name
    video = client.list_templates(templates_pb2.TEMPLATE_KIND_VIDEO)[0].name
    voice = client.upload(mixes.wav_bytes(mixes.make_mix("en-us", 4.0).mixture), "v.wav").name
    accepted, refused = [], None
    for _ in range(40):  # more than the 32 jobs a tenant may have queued or running
        try:
            accepted.append(client.create_video_job(face, voice, video))
        except grpc.RpcError as error:
            refused = error
            break
    try:
        assert refused is not None, "the queue never filled"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry in" in refused.details()
        status = rpc_status.from_call(refused)
        hint = error_details_pb2.RetryInfo()
        assert status is not None and status.details[0].Unpack(hint)
        assert hint.retry_delay.seconds > 0

        # A queued job cancelled ends at once and its place is free for new work.
        queued = accepted[-1]
        cancelled = client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=queued.name)).job
        assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
        accepted.append(client.create_video_job(face, voice, video))
    finally:
        for job in accepted:
            try:
                client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
            except grpc.RpcError:
                pass  # already ended
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(
            client.get_job(job.name).state
            in (jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JOB_STATE_SUCCEEDED)
            for job in accepted
        ):
            return
        time.sleep(1)
    pytest.fail("cancelled jobs did not end within 2 minutes")
