"""The MP4 track end to end through the real stack: voice, faceswap, lipsync, orchestrator."""

import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services import samples as mixes
from services.client import RemindClient
from services.shared import faces, images, video
from services.shared.content_credentials import TRAINED_ALGORITHMIC_MEDIA, VALID
from services.shared.provenance import verify_media
from services.stack import LocalStack

VOICE_SECONDS = 12.0
TEMPLATE = "templates/astronaut-talk"


@pytest.fixture(scope="module")
def voice_mix() -> mixes.Mix:
    return mixes.make_mix("en-us", VOICE_SECONDS, voice_to_music_db=3.0)


@pytest.fixture(scope="module")
def video_job(stack: LocalStack, user_photo, voice_mix, tmp_path_factory):
    info = stack.info()
    with RemindClient(info.orchestrator_address, info.api_keys["local"]) as client:
        face = client.upload(images.encode_image(user_photo, "png"), "me.png")
        voice = client.upload(mixes.wav_bytes(voice_mix.mixture), "voice.wav")
        job = client.create_video_job(face.name, voice.name, TEMPLATE)
        events = list(client.watch(job.name))
        final = events[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        path = tmp_path_factory.mktemp("video") / "result.mp4"
        path.write_bytes(client.download(final.result.media))
        template = client.templates.GetTemplate(
            templates_pb2.GetTemplateRequest(name=TEMPLATE)
        ).template
    return final, events, path, template


def _ffprobe(path: Path) -> dict:
    done = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_the_mp4_plays_with_video_and_audio_as_long_as_the_template(video_job):
    job, events, path, template = video_job
    report = _ffprobe(path)
    codecs = {stream["codec_type"]: stream for stream in report["streams"]}
    assert codecs["video"]["codec_name"] == "h264" and codecs["video"]["pix_fmt"] == "yuv420p"
    assert codecs["audio"]["codec_name"] == "aac"
    assert abs(float(report["format"]["duration"]) - template.duration_seconds) < 0.1
    assert abs(float(codecs["audio"]["duration"]) - template.duration_seconds) < 0.1
    verdict = verify_media(path)
    assert verdict.credentials.state == VALID, verdict.credentials.problems
    assert verdict.credentials.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert verdict.watermark.watermarked
    assert job.result.frames_total == template.frame_count
    assert job.result.engines["voice"] == "spleeter"
    assert job.result.engines["lipsync"] == "mouth_motion"
    stages = [event.progress.stage for event in events]
    for stage in (
        jobs_pb2.JOB_STAGE_EXTRACTING_VOICE,
        jobs_pb2.JOB_STAGE_SYNCING_LIPS,
        jobs_pb2.JOB_STAGE_STORING,
    ):
        assert stage in stages


def _mouth_opening(face: faces.DetectedFace) -> float:
    """Inner-lip gap (dlib points 62/66) over the face's height: an opening scale-free."""
    landmarks = face.landmarks
    gap = np.linalg.norm(landmarks[66] - landmarks[62])
    height = np.linalg.norm(landmarks[8] - landmarks[27])
    return float(gap / height)


def test_the_mouth_follows_the_voice_and_the_face_is_the_photos(video_job, user_photo, voice_mix):
    job, _, path, template = video_job
    analyzer = faces.default_analyzer()
    fps = template.fps
    voice_frames = int(VOICE_SECONDS * fps)
    openings, loudness = [], []
    photo = analyzer.identity_embedding(user_photo, analyzer.primary_face(user_photo))
    distances = []
    speech = voice_mix.voice.mean(axis=1)
    window = int(0.04 * mixes.SAMPLE_RATE)
    for index, frame in enumerate(video.iter_frames(path)):
        if index >= voice_frames:
            break
        face = analyzer.primary_face(frame)
        if face is None:
            continue
        openings.append(_mouth_opening(face))
        centre = int(index / fps * mixes.SAMPLE_RATE)
        chunk = speech[max(0, centre - window) : centre + window]
        loudness.append(float(np.sqrt(np.mean(chunk**2))))
        if index % 50 == 0:
            distances.append(
                faces.identity_distance(analyzer.identity_embedding(frame, face), photo)
            )
    assert len(openings) >= 0.9 * voice_frames
    r = float(np.corrcoef(openings, loudness)[0, 1])
    print(f"mouth opening vs voice loudness: Pearson r = {r:.3f} over {len(openings)} frames")
    assert r >= 0.5
    print(f"identity distance to the photo: {np.round(distances, 3)}")
    assert np.median(distances) < 0.6


def _status(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_a_voice_recording_without_speech_fails_the_job_with_a_reason(client, user_photo):
    music_only = mixes.music(8.0)
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    voice = client.upload(mixes.wav_bytes(music_only * 0.3), "music.wav")
    job = client.create_video_job(face.name, voice.name, TEMPLATE)
    final = list(client.watch(job.name))[-1]
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "No speech" in final.error.message
    assert not final.result.media


def test_bad_video_job_requests_get_clear_statuses(client, user_photo, astronaut_png):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    voice = client.upload(mixes.wav_bytes(mixes.speech("en-us", "hello there", 2.0)), "v.wav")
    error = _status(
        lambda: client.create_video_job(face.name, voice.name, "templates/astronaut-sway")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "video template" in error.details()
    not_audio = client.upload(astronaut_png, "not-audio.wav")
    error = _status(lambda: client.create_video_job(face.name, not_audio.name, TEMPLATE))
    # ffprobe reads a picture as a one-frame video: the voice service says it has no sound.
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sound track" in error.details()
    error = _status(lambda: client.create_video_job(face.name, "media/" + "0" * 32, TEMPLATE))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_or_unready_engines_are_refused_before_a_job_is_queued(client, user_photo):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    voice = client.upload(mixes.wav_bytes(mixes.speech("en-us", "hello there", 2.0)), "v.wav")

    def create(**engines: str) -> jobs_pb2.Job:
        return client.jobs.CreateVideoJob(
            jobs_pb2.CreateVideoJobRequest(
                face_media=face.name, voice_media=voice.name, template=TEMPLATE, **engines
            )
        )

    error = _status(lambda: create(voice_engine="demucs"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "spleeter" in error.details()
    error = _status(lambda: create(lipsync_engine="sadtalker"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "mouth_motion" in error.details()
    # No Wav2Lip weights are installed here: the engine exists but cannot run.
    error = _status(lambda: create(lipsync_engine="wav2lip"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "wav2lip" in error.details()
