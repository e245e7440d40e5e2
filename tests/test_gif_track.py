"""The GIF track end to end through the real stack: S3, faceswap and orchestrator processes."""

import json
from pathlib import Path

import numpy as np
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.shared import faces, images, video, watermark
from services.shared.storage import ObjectStore
from services.stack import LocalStack

RESULTS_BUCKET, TEMPLATES_BUCKET = "remind-results", "remind-templates"


@pytest.fixture(scope="module")
def finished_job(stack: LocalStack, user_photo: np.ndarray) -> tuple[jobs_pb2.Job, list]:
    with RemindClient(stack.info().orchestrator_address, stack.info().api_keys["local"]) as client:
        photo = client.upload(images.encode_image(user_photo, "png"), "me.png")
        template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0]
        job = client.create_gif_job(photo.name, template.name)
        events = list(client.watch(job.name))
    return events[-1], events


def _identity(analyzer: faces.FaceAnalyzer, image: np.ndarray) -> np.ndarray | None:
    face = analyzer.primary_face(image)
    return None if face is None else analyzer.identity_embedding(image, face)


def test_gif_job_succeeds_with_streamed_progress(finished_job):
    job, events = finished_job
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error.message
    fractions = [event.progress.fraction for event in events]
    assert fractions == sorted(fractions), "progress never goes backwards"
    stages = {event.progress.stage for event in events}
    assert jobs_pb2.JOB_STAGE_SWAPPING_FACES in stages
    swapping = [e for e in events if e.progress.stage == jobs_pb2.JOB_STAGE_SWAPPING_FACES]
    assert len({e.progress.frames_done for e in swapping}) > 5, "frames are reported as they go"
    assert job.result.engines["faceswap"] == "landmark_warp"
    assert job.result.frames_with_face >= 0.9 * job.result.frames_total
    assert job.result.download_url.startswith("http://127.0.0.1:")


def test_result_frames_decode_and_carry_the_photo_identity(
    finished_job, client, store, user_photo, tmp_path: Path
):
    job, _ = finished_job
    result = tmp_path / "result.gif"
    result.write_bytes(client.download(job.result.media))
    template_record = client.templates.GetTemplate(
        templates_pb2.GetTemplateRequest(name=job.template)
    ).template
    template = tmp_path / "template.gif"
    store.download(TEMPLATES_BUCKET, f"builtin/{job.template.split('/')[1]}.gif", template)

    output_frames = list(video.iter_frames(result))
    template_frames = list(video.iter_frames(template))
    assert len(output_frames) == template_record.frame_count == len(template_frames)
    assert output_frames[0].shape == (template_record.height, template_record.width, 3)

    analyzer = faces.default_analyzer()
    photo = _identity(analyzer, user_photo)
    closer = 0
    compared = 0
    for out, original in list(zip(output_frames, template_frames, strict=True))[::4]:
        swapped, before = _identity(analyzer, out), _identity(analyzer, original)
        if swapped is None or before is None:
            continue
        compared += 1
        to_photo = faces.identity_distance(swapped, photo)
        to_template = faces.identity_distance(swapped, before)
        closer += to_photo < to_template
    assert compared >= 5
    assert watermark.verify(output_frames).watermarked, "every output carries the watermark"
    assert not watermark.verify(template_frames).watermarked
    assert closer >= 0.8 * compared, f"only {closer}/{compared} frames look like the photo"


def test_result_is_stored_under_a_tenant_scoped_key(finished_job, store: ObjectStore):
    job, _ = finished_job
    job_id = job.name.split("/")[1]
    keys = store.list_keys(RESULTS_BUCKET, f"local/{job_id}/")
    assert len(keys) == 1 and keys[0].endswith(".gif")


def test_the_job_id_traces_the_job_through_the_faceswap_service(finished_job, stack: LocalStack):
    job, _ = finished_job
    job_id = job.name.split("/")[1]
    lines = (stack.state_dir / "logs" / "faceswap.log").read_text().splitlines()
    traced = [json.loads(line) for line in lines if job_id in line]
    assert any(
        entry.get("trace_id") == job_id and entry["message"].startswith("SwapFaces:")
        for entry in traced
    )


def test_job_record_survives_an_orchestrator_restart(finished_job, stack: LocalStack):
    job, _ = finished_job
    stack.stop("orchestrator")
    stack.start()
    with RemindClient(stack.info().orchestrator_address, stack.info().api_keys["local"]) as client:
        again = client.get_job(job.name)
        assert again.state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert again.result.media == job.result.media
        assert job.name in [listed.name for listed in client.list_jobs()]
        assert len(client.download(again.result.media)) == job.result.size_bytes
