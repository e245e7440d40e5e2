"""Model services killed and restarted under a running MP4 job: the job waits for them within
the retry window, counted from the last progress, and fails with the reason when one stays
down."""

import time

from remind.v1 import job_service_pb2 as jobs_pb2

from services import samples
from services.client import RemindClient
from services.shared import images
from services.stack import LocalStack
from tests.support.faults import kill_hard, separating_voice

TEMPLATE = "templates/astronaut-talk"  # 30 s, 750 frames
# The stack fixture's REMIND_ORCHESTRATOR_STREAM_RETRY_SECONDS.
RETRY_WINDOW_SECONDS = 20.0


def _start_video_job(client: RemindClient, user_photo) -> jobs_pb2.Job:
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    mix = samples.make_mix("en-us", 30.0, voice_to_music_db=3.0)
    voice = client.upload(samples.wav_bytes(mix.mixture), "voice.wav")
    return client.create_video_job(face.name, voice.name, TEMPLATE)


def test_an_mp4_job_survives_a_voice_restart_in_extraction_and_a_lipsync_restart_late_in_rendering(
    stack: LocalStack, client: RemindClient, user_photo
):
    job = _start_video_job(client, user_photo)
    voice_restarted = lipsync_restarted_at_frame = 0
    rendering_since = 0.0
    for event in client.watch(job.name):
        if not voice_restarted and separating_voice(event):
            kill_hard(stack, "voice")
            stack.start()
            voice_restarted = True
        if event.progress.stage == jobs_pb2.JOB_STAGE_SYNCING_LIPS and not rendering_since:
            rendering_since = time.monotonic()
        # Later than the window after the frames began: a window counted from the start of
        # rendering would already be over.
        late = rendering_since and time.monotonic() - rendering_since > RETRY_WINDOW_SECONDS + 3
        if late and not lipsync_restarted_at_frame and event.progress.frames_done < 700:
            kill_hard(stack, "lipsync")
            stack.start()
            lipsync_restarted_at_frame = event.progress.frames_done
        final = event
    assert voice_restarted and lipsync_restarted_at_frame, "the job ended before both restarts"
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert final.result.frames_total == 750
    assert final.result.engines["voice"] == "spleeter"
    log = (stack.state_dir / "logs" / "orchestrator.log").read_text()
    assert "voice extraction broke" in log
    assert "stream broke at frame" in log


def test_an_mp4_job_fails_with_the_reason_when_the_voice_service_stays_down(
    stack: LocalStack, client: RemindClient, user_photo
):
    job = _start_video_job(client, user_photo)
    killed_at = 0.0
    try:
        for event in client.watch(job.name):
            if not killed_at and separating_voice(event):
                kill_hard(stack, "voice")  # and nobody brings it back
                killed_at = time.monotonic()
            final = event
        failed_after = time.monotonic() - killed_at
    finally:
        stack.start()
    assert killed_at, "the job ended before the voice service was killed"
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert final.error.code == 14  # UNAVAILABLE
    assert "voice service" in final.error.message
    assert f"gave up after retrying for {RETRY_WINDOW_SECONDS:g} s" in final.error.message
    # The whole window, and not much more.
    assert RETRY_WINDOW_SECONDS - 1 <= failed_after <= RETRY_WINDOW_SECONDS + 10, failed_after
