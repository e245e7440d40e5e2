"""The caller's consent on job requests, on the real stack: kept in the job and returned by
GetJob and ListJobs; refused when missing from an orchestrator set to require it
(REMIND_ORCHESTRATOR_REQUIRE_CONSENT), here a second replica beside the stack's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2

from services import samples
from services.client import RemindClient
from services.shared import images
from services.stack import LocalStack

GIF_TEMPLATE, VIDEO_TEMPLATE = "templates/astronaut-sway", "templates/astronaut-talk"


@pytest.fixture(scope="module")
def inputs(stack: LocalStack, user_photo: np.ndarray) -> tuple[str, str]:
    info = stack.start()
    with RemindClient(info.orchestrator_address, info.api_keys["local"]) as client:
        photo = client.upload(images.encode_image(user_photo, "png"), "me.png")
        voice = client.upload(samples.sample_voice_recording(), "me.wav")
    return photo.name, voice.name


@pytest.fixture
def consent_required(stack: LocalStack) -> Iterator[RemindClient]:
    """A client of another orchestrator replica on the same store and queue, started with the
    requirement on, and stopped after the test."""
    replica = LocalStack(
        stack.state_dir,
        stack.base_port,
        extra_env={**stack.extra_env, "REMIND_ORCHESTRATOR_REQUIRE_CONSENT": "true"},
        tenants=stack.tenants,
        orchestrators=2,
    )
    info = replica.start()
    try:
        with RemindClient(info.address("orchestrator-2"), info.api_keys["local"]) as client:
            yield client
    finally:
        replica.stop("orchestrator-2")


def _cancel(client: RemindClient, job: jobs_pb2.Job) -> None:
    client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name), timeout=30)


def _status(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_get_job_and_list_jobs_return_the_consent_given(
    client: RemindClient, inputs: tuple[str, str]
) -> None:
    photo, voice = inputs
    given = client.create_gif_job(photo, GIF_TEMPLATE, consent=True)
    not_given = client.create_gif_job(photo, GIF_TEMPLATE)
    video = client.create_video_job(photo, voice, VIDEO_TEMPLATE, consent=True)
    for job in (given, not_given, video):
        _cancel(client, job)
    assert given.consent and not not_given.consent and video.consent
    assert client.get_job(given.name).consent
    assert not client.get_job(not_given.name).consent
    assert client.get_job(video.name).consent
    listed = {job.name: job.consent for job in client.list_jobs(50)}
    assert listed[given.name] and not listed[not_given.name] and listed[video.name]


def test_without_consent_a_replica_that_requires_it_refuses_the_job(
    consent_required: RemindClient, client: RemindClient, inputs: tuple[str, str]
) -> None:
    photo, voice = inputs
    for create in (
        lambda: consent_required.create_gif_job(photo, GIF_TEMPLATE),
        lambda: consent_required.create_video_job(photo, voice, VIDEO_TEMPLATE),
    ):
        error = _status(create)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "set consent to confirm that the face (and the voice) are your own" in (
            error.details()
        ), error.details()
    accepted = consent_required.create_gif_job(photo, GIF_TEMPLATE, consent=True)
    _cancel(consent_required, accepted)
    # The stack's own replica, without the requirement, still takes a job without consent.
    _cancel(client, client.create_gif_job(photo, GIF_TEMPLATE))
