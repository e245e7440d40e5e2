"""MP4 job benchmark: the pipelined job through the public API vs the same stages one after
another (each stage over the whole video before the next starts), on the real stack.

Prints a table and writes out/video_bench.json.
"""

import io
import json
import tempfile
import time
from pathlib import Path

from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.orchestrator.frame_pipeline import template_frames
from services.orchestrator.model_clients import FaceSwapClient, LipSyncClient, VoiceClient
from services.orchestrator.retries import RetryPolicy
from services.orchestrator.video_job import VocalsFile
from services.samples import sample_face_photo, sample_voice_recording
from services.shared import images, video
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.shared.storage_grants import GrantSigner
from services.stack import LocalStack, ports_free

LIMITS = (64 << 20, 1800.0, RetryPolicy(window_seconds=0))


def _free_base() -> int:
    return next(base for base in range(30000, 34000, 20) if ports_free(base))


def pipelined(client: RemindClient, photo: bytes, voice: bytes, template: str) -> float:
    face = client.upload(photo, "face.png").name
    recording = client.upload(voice, "voice.wav").name
    started = time.perf_counter()
    job = client.create_video_job(face, recording, template)
    final = list(client.watch(job.name))[-1]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    return time.perf_counter() - started


def sequential(
    info, photo: bytes, voice: media_pb2.StorageObject, template_path: Path, work: Path
) -> float:
    """The same work with no overlap: each stage finishes before the next begins."""
    faceswap = FaceSwapClient(info.faceswap_address, *LIMITS)
    lipsync = LipSyncClient(info.lipsync_address, *LIMITS)
    separator = VoiceClient(info.voice_address, *LIMITS, GrantSigner(info.grant_signing_key, 60))
    template = video.probe(template_path)
    started = time.perf_counter()
    identity = faceswap.prepare_identity(photo, "")
    with VocalsFile(work / "vocals.wav", template.duration_seconds) as vocals:
        separator.extract_voice(voice, "", vocals.max_seconds, vocals, lambda fraction: None)
    features = lipsync.prepare_audio(vocals.pcm_chunks, vocals.audio_format(), "")
    frames = list(template_frames(template_path)(0))
    swapped = [
        media_pb2.Frame(index=r.index, image=r.image)
        for r in faceswap.swap_faces(identity, iter(frames))
    ]
    synced = [r.image.data for r in lipsync.sync_lips(features, template.fps, iter(swapped))]
    with video.Mp4Encoder(
        work / "sequential.mp4", template.width, template.height, template.fps, vocals.path
    ) as encoder:
        for image in synced:
            encoder.write(images.decode_image(image, template.width * template.height))
    elapsed = time.perf_counter() - started
    for client in (faceswap, lipsync, separator):
        client.close()
    return elapsed


def main() -> None:
    photo = images.encode_image(sample_face_photo(), "png")
    voice = sample_voice_recording(20.0)
    with tempfile.TemporaryDirectory() as work:
        stack = LocalStack(Path(work) / "stack", _free_base())
        info = stack.start()
        try:
            with RemindClient(info.orchestrator_address, info.api_keys["local"]) as client:
                template = client.list_templates(templates_pb2.TEMPLATE_KIND_VIDEO)[0]
                job_seconds = pipelined(client, photo, voice, template.name)
            store = ObjectStore(
                S3Settings(
                    endpoint=info.s3_endpoint,
                    access_key=info.access_key,
                    secret_key=info.secret_key,
                )
            )
            template_path = Path(work) / "template.mp4"
            store.download(
                "remind-templates", f"builtin/{template.name.split('/')[1]}.mp4", template_path
            )
            recording = media_pb2.StorageObject(bucket="remind-uploads", key="bench/voice.wav")
            store.put_new(recording.bucket, recording.key, io.BytesIO(voice), len(voice))
            sequential_seconds = sequential(info, photo, recording, template_path, Path(work))
        finally:
            stack.stop()
    results = {
        "template": template.name,
        "template_seconds": template.duration_seconds,
        "frames": template.frame_count,
        "pipelined_job_seconds": round(job_seconds, 2),
        "pipelined_frames_per_second": round(template.frame_count / job_seconds, 1),
        "real_time_factor": round(job_seconds / template.duration_seconds, 3),
        "sequential_stages_seconds": round(sequential_seconds, 2),
        "sequential_over_pipelined": round(sequential_seconds / job_seconds, 2),
    }
    print(f"{'MP4 job figure':<32}{'value':>14}")
    for key, value in results.items():
        print(f"{key:<32}{value!s:>14}")
    Path("out").mkdir(exist_ok=True)
    Path("out/video_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
