"""Hostile input, against the public API and against each model service directly.

A corpus of bad requests (corrupt, truncated, empty, forged and wrong-type media, decompression
bombs, over-long media, wrong field combinations, foreign names, oversized messages, misused
chunks and streams), each answered with an expected status and a message a person can act on;
then property-based checks of request validation. Afterwards every server still answers
SERVING and nothing stored in the templates or results buckets has changed.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from remind.v1 import (
    faceswap_pb2,
    faceswap_pb2_grpc,
    lipsync_pb2,
    lipsync_pb2_grpc,
    media_pb2,
    voice_pb2,
    voice_pb2_grpc,
)
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as uploads_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services import samples as mixes
from services.client import RemindClient
from services.shared import images
from services.shared.storage import ObjectStore
from services.shared.storage_grants import READ, WRITE, GrantSigner
from services.stack import LocalStack, StackInfo

TIMEOUT = 60
GIF_TEMPLATE = "templates/astronaut-sway"
VIDEO_TEMPLATE = "templates/astronaut-talk"
# The servers' default message limit (ServerSettings.max_message_bytes) and upload limits.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_FPS = 120.0
OVER_MESSAGE_LIMIT = b"\0" * (MAX_MESSAGE_BYTES + 1024 * 1024)
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS

# Probabilistic checks stay small so the whole file runs in about two minutes on two cores;
# no example database, so a run leaves nothing behind in the working tree.
BOUNDED = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------------------------
# Hostile media, made on the spot
# ---------------------------------------------------------------------------------------------


@functools.cache
def _ffmpeg(name: str, *arguments: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="hostile-") as work:
        out = Path(work) / name
        subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments, str(out)], check=True)
        return out.read_bytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, pixels: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def _astronaut_png() -> bytes:
    return images.encode_image(data.astronaut(), "png")


@functools.cache
def _astronaut_jpeg() -> bytes:
    return images.encode_image(data.astronaut(), "jpeg")


@functools.cache
def inflating_png() -> bytes:
    """200 MB of pixel data deflated to about 200 kB, behind a header that claims 100x100."""
    deflate = zlib.compressobj(9)
    pixels = deflate.compress(bytes(200 * 1024 * 1024)) + deflate.flush()
    return _png(100, 100, pixels)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose start-of-frame header is rewritten to claim another size."""
    jpeg = bytearray(_astronaut_jpeg())
    start = jpeg.find(b"\xff\xc0")
    jpeg[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def gif_photo_with_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen is giant: header, screen descriptor, trailer."""
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def webp_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP header claiming a canvas, with no image data after it."""
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + canvas
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def small_gif() -> bytes:
    return _ffmpeg("small.gif", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-t", "2")


def gif_template_with_screen(width: int, height: int) -> bytes:
    """Small real frames behind a logical screen of the given size."""
    gif = bytearray(small_gif())
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def ninety_second_video() -> bytes:
    """A long video template at almost no bitrate: 90 s of one grey frame per second."""
    return _ffmpeg(
        "long.mp4", "-f", "lavfi", "-i", "color=c=gray:size=64x64:rate=1", "-t", "90",
        "-c:v", "libx264", "-pix_fmt", "yuv420p",
    )  # fmt: skip


def faceless_video() -> bytes:
    return _ffmpeg(
        "faceless.mp4", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "2",
        "-c:v", "libx264", "-pix_fmt", "yuv420p",
    )  # fmt: skip


def tone_mp3(seconds: float) -> bytes:
    return _ffmpeg(f"tone{seconds:g}.mp3", "-f", "lavfi", "-i", f"sine=f=300:d={seconds:g}")


def quiet_mp3(seconds: float) -> bytes:
    """Silence at 8 kb/s: minutes of audio in a few hundred kilobytes."""
    return _ffmpeg(
        f"quiet{seconds:g}.mp3", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t",
        f"{seconds:g}", "-b:a", "8k",
    )  # fmt: skip


def hours_of_mp3(repeats: int) -> bytes:
    """Ten seconds of CBR frames repeated without a Xing header: long, and small to send."""
    ten_seconds = _ffmpeg(
        "ten.mp3", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "10", "-b:a", "8k",
        "-write_xing", "0",
    )  # fmt: skip
    return ten_seconds * repeats


def wav_claiming_hours() -> bytes:
    """A WAV whose RIFF and data sizes claim about 6 hours; it holds 3 s of silence."""
    fmt = struct.pack("<HHIIHH", 1, 2, 44100, 44100 * 4, 4, 16)
    return (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", 0xFFFFFFF0) + bytes(3 * 44100 * 4)
    )  # fmt: skip


@functools.cache
def speech_wav() -> bytes:
    return mixes.wav_bytes(mixes.speech("en-us", "Hello there, this is my voice.", 3.0))


def frame_png(side: int) -> bytes:
    return images.encode_image(np.zeros((side, side, 3), np.uint8), "png")


# ---------------------------------------------------------------------------------------------
# The world the corpus runs in
# ---------------------------------------------------------------------------------------------


@dataclass
class Hostile:
    """Clients, stubs and valid inputs, so that each case changes exactly one thing."""

    info: StackInfo
    client: RemindClient
    faceswap: faceswap_pb2_grpc.FaceSwapServiceStub
    voice: voice_pb2_grpc.VoiceServiceStub
    lipsync: lipsync_pb2_grpc.LipSyncServiceStub
    face_media: str
    voice_media: str
    identity: faceswap_pb2.FaceIdentity
    features: lipsync_pb2.AudioFeatures
    other_tenant_job: str
    other_tenant_media: str
    other_tenant_upload: str
    stored_before: dict[str, bytes]


def _snapshot(store: ObjectStore) -> dict[str, bytes]:
    """Every template and result (uploads and records change with every request)."""
    return {
        f"{bucket}/{key}": store.get_bytes(bucket, key)
        for bucket in ("remind-templates", "remind-results")
        for key in store.list_keys(bucket, "")
    }


def _wait_for_every_job(info: StackInfo) -> None:
    """Jobs left by earlier tests would add results while the corpus runs."""
    for key in info.api_keys.values():
        with RemindClient(info.orchestrator_address, key) as tenant:
            for job in tenant.list_jobs(page_size=200):
                if job.state not in TERMINAL:
                    list(tenant.watch(job.name, timeout=600))


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def hostile(stack: LocalStack, stack_info: StackInfo, store: ObjectStore) -> Iterator[Hostile]:
    stack.start()  # brings back anything an earlier test stopped on purpose
    info = stack_info
    channels = [
        grpc.insecure_channel(address)
        for address in (info.faceswap_address, info.voice_address, info.lipsync_address)
    ]
    faceswap = faceswap_pb2_grpc.FaceSwapServiceStub(channels[0])
    lipsync = lipsync_pb2_grpc.LipSyncServiceStub(channels[2])
    with (
        RemindClient(info.orchestrator_address, info.api_keys["local"]) as client,
        RemindClient(info.orchestrator_address, info.api_keys["acme"]) as acme,
    ):
        acme_photo = acme.upload(_astronaut_png(), "acme.png")
        acme_job = acme.create_gif_job(acme_photo.name, GIF_TEMPLATE)
        acme_upload = acme.media.CreateUpload(
            uploads_pb2.CreateUploadRequest(filename="acme.png", size_bytes=10)
        ).upload
        identity = faceswap.PrepareIdentity(
            faceswap_pb2.PrepareIdentityRequest(
                photo=media_pb2.EncodedImage(data=_astronaut_png())
            ),
            timeout=TIMEOUT,
        ).identity
        features = _prepare_audio(
            lipsync,
            _audio_config(),
            _audio_chunk(lipsync_pb2.PrepareAudioRequest, speech_wav()),
        ).features
        world = Hostile(
            info=info,
            client=client,
            faceswap=faceswap,
            voice=voice_pb2_grpc.VoiceServiceStub(channels[1]),
            lipsync=lipsync,
            face_media=client.upload(_astronaut_png(), "me.png").name,
            voice_media=client.upload(speech_wav(), "me.wav").name,
            identity=identity,
            features=features,
            other_tenant_job=acme_job.name,
            other_tenant_media=acme_photo.name,
            other_tenant_upload=acme_upload,
            stored_before={},
        )
        _wait_for_every_job(info)
        world.stored_before = _snapshot(store)
        yield world
    for channel in channels:
        channel.close()


# ---------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------

CONTAINER = media_pb2.AudioFormat(encoding=media_pb2.AUDIO_ENCODING_CONTAINER)


def pcm(rate: int, channels: int) -> media_pb2.AudioFormat:
    return media_pb2.AudioFormat(
        encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=rate, channels=channels
    )


def _audio_chunk(message: type, audio: bytes):  # type: ignore[no-untyped-def]
    return message(chunk=media_pb2.AudioChunk(data=audio))


def _chunked(message: type, audio: bytes, size: int = MAX_CHUNK_BYTES) -> list:
    return [
        _audio_chunk(message, audio[start : start + size]) for start in range(0, len(audio), size)
    ]


def _gif_job(h: Hostile, photo: bytes, filename: str, template: str = GIF_TEMPLATE) -> jobs_pb2.Job:
    face = h.client.upload(photo, filename)
    return h.client.create_gif_job(face.name, template)


def _video_job(h: Hostile, recording: bytes, filename: str, **fields: str) -> jobs_pb2.Job:
    voice = h.client.upload(recording, filename).name
    request = {"face_media": h.face_media, "voice_media": voice, "template": VIDEO_TEMPLATE}
    request.update(fields)
    return h.client.jobs.CreateVideoJob(
        jobs_pb2.CreateVideoJobRequest(**request), timeout=TIMEOUT
    ).job


def _create_template(h: Hostile, upload: bytes, filename: str, template_id: str = "hostile"):  # type: ignore[no-untyped-def]
    media_name = h.client.upload(upload, filename).name
    return h.client.templates.CreateTemplate(
        templates_pb2.CreateTemplateRequest(media=media_name, template_id=template_id),
        timeout=TIMEOUT,
    )


def _new_upload(h: Hostile, size: int = 64) -> str:
    return h.client.media.CreateUpload(
        uploads_pb2.CreateUploadRequest(
            content_type="image/png", filename="a.png", size_bytes=size
        ),
        timeout=TIMEOUT,
    ).upload


def _append(h: Hostile, upload: str, offset: int, chunk: bytes) -> uploads_pb2.AppendUploadResponse:
    return h.client.media.AppendUpload(
        uploads_pb2.AppendUploadRequest(upload=upload, offset=offset, data=chunk), timeout=TIMEOUT
    )


def _finish(h: Hostile, upload: str) -> uploads_pb2.FinishUploadResponse:
    return h.client.media.FinishUpload(
        uploads_pb2.FinishUploadRequest(upload=upload), timeout=TIMEOUT
    )


def _append_after_finish(h: Hostile):  # type: ignore[no-untyped-def]
    upload = _new_upload(h)
    _append(h, upload, 0, b"first")
    _finish(h, upload)
    return _append(h, upload, 5, b"second")


def _upload_stream(h: Hostile, *requests: uploads_pb2.UploadMediaRequest):  # type: ignore[no-untyped-def]
    return h.client.media.UploadMedia(iter(requests), timeout=TIMEOUT)


METADATA = uploads_pb2.UploadMediaRequest(
    metadata=uploads_pb2.UploadMediaMetadata(content_type="image/png", filename="a.png")
)


def _swap(h: Hostile, *requests: faceswap_pb2.SwapFacesRequest) -> list:
    return list(h.faceswap.SwapFaces(iter(requests), timeout=TIMEOUT))


def _swap_config(h: Hostile, **identity: object) -> faceswap_pb2.SwapFacesRequest:
    if identity:
        chosen = faceswap_pb2.FaceIdentity(**identity)
    else:
        chosen = h.identity
    return faceswap_pb2.SwapFacesRequest(config=faceswap_pb2.SwapConfig(identity=chosen))


def _swap_frame(image: bytes) -> faceswap_pb2.SwapFacesRequest:
    return faceswap_pb2.SwapFacesRequest(
        frame=media_pb2.Frame(index=0, image=media_pb2.EncodedImage(data=image))
    )


def _prepare_identity(h: Hostile, photo: bytes, engine: str = ""):  # type: ignore[no-untyped-def]
    return h.faceswap.PrepareIdentity(
        faceswap_pb2.PrepareIdentityRequest(
            photo=media_pb2.EncodedImage(data=photo), engine=engine
        ),
        timeout=TIMEOUT,
    )


def _grant(
    h: Hostile, target: media_pb2.StorageObject, verb: media_pb2.StorageVerb
) -> media_pb2.StorageGrant:
    """The grant the orchestrator would send, so a case's one bad field is what is refused."""
    return GrantSigner(h.info.grant_signing_key, TIMEOUT).grant(target, verb)


def _probe(h: Hostile, **source: object) -> voice_pb2.ProbeAudioResponse:
    request = voice_pb2.ProbeAudioRequest(**source)
    if request.HasField("object"):
        request.object_grant.CopyFrom(_grant(h, request.object, READ))
    return h.voice.ProbeAudio(request, timeout=TIMEOUT)


def _separate(h: Hostile, *requests: voice_pb2.SeparateVoiceRequest) -> list:
    for config in (request.config for request in requests if request.HasField("config")):
        if config.HasField("source"):
            config.source_grant.CopyFrom(_grant(h, config.source, READ))
        if config.HasField("store_prefix"):
            config.store_prefix_grant.CopyFrom(_grant(h, config.store_prefix, WRITE))
    return list(h.voice.SeparateVoice(iter(requests), timeout=TIMEOUT))


def _separation(**config: object) -> voice_pb2.SeparateVoiceRequest:
    config.setdefault("format", CONTAINER)
    return voice_pb2.SeparateVoiceRequest(config=voice_pb2.SeparationConfig(**config))


def _prepare_audio(
    stub: lipsync_pb2_grpc.LipSyncServiceStub, *requests
) -> lipsync_pb2.PrepareAudioResponse:  # type: ignore[no-untyped-def]
    return stub.PrepareAudio(iter(requests), timeout=TIMEOUT)


def _audio_config(audio_format: media_pb2.AudioFormat = CONTAINER, engine: str = ""):  # type: ignore[no-untyped-def]
    return lipsync_pb2.PrepareAudioRequest(
        config=lipsync_pb2.PrepareAudioConfig(engine=engine, format=audio_format)
    )


def _sync(h: Hostile, *requests: lipsync_pb2.SyncLipsRequest) -> list:
    return list(h.lipsync.SyncLips(iter(requests), timeout=TIMEOUT))


def _sync_config(h: Hostile, fps: float = 25.0, **features: object) -> lipsync_pb2.SyncLipsRequest:
    chosen = lipsync_pb2.AudioFeatures(**features) if features else h.features
    return lipsync_pb2.SyncLipsRequest(config=lipsync_pb2.LipSyncConfig(features=chosen, fps=fps))


def _sync_frame(image: bytes) -> lipsync_pb2.SyncLipsRequest:
    return lipsync_pb2.SyncLipsRequest(
        frame=media_pb2.Frame(index=0, image=media_pb2.EncodedImage(data=image))
    )


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[Hostile], object]
    codes: tuple[grpc.StatusCode, ...]
    # A word the message must contain, so that it says what went wrong.
    word: str


def case(name: str, call: Callable[[Hostile], object], code, word: str) -> Case:  # type: ignore[no-untyped-def]
    return Case(name, call, code if isinstance(code, tuple) else (code,), word)


ORCHESTRATOR_CASES = [
    # Photos: corrupt, forged, bombs, wrong types.
    case("truncated-jpeg-photo",
         lambda h: _gif_job(h, _astronaut_jpeg()[:20_000], "me.jpg"), INVALID, "truncated"),
    case("jpeg-header-claims-65535x65535",
         lambda h: _gif_job(h, jpeg_claiming(65535, 65535), "me.jpg"), EXHAUSTED, "megapixels"),
    case("gif-photo-with-65535x65535-logical-screen",
         lambda h: _gif_job(h, gif_photo_with_screen(65535, 65535), "me.gif"), EXHAUSTED,
         "megapixels"),
    case("webp-header-claims-16384x16384",
         lambda h: _gif_job(h, webp_claiming(16384, 16384), "me.webp"), EXHAUSTED, "megapixels"),
    case("png-header-claims-zero-width",
         lambda h: _gif_job(h, _png(0, 480, b""), "me.png"), INVALID, "zero"),
    # Only the declared 100x100 pixels are inflated; the 200 MB behind them never are.
    case("png-whose-data-inflates-to-200-mb",
         lambda h: _gif_job(h, inflating_png(), "bomb.png"), PRECONDITION, "face"),
    case("mp4-sent-as-the-photo",
         lambda h: _gif_job(h, faceless_video(), "me.mp4"), INVALID, "image"),
    case("zip-archive-sent-as-the-photo",
         lambda h: _gif_job(h, b"PK\x03\x04" + bytes(200), "me.zip"), INVALID, "image"),
    case("one-pixel-photo",
         lambda h: _gif_job(h, frame_png(1), "dot.png"), PRECONDITION, "face"),
    case("photo-and-voice-swapped-in-a-video-job",
         lambda h: _video_job(h, speech_wav(), "me.wav", face_media=h.voice_media), INVALID,
         "image"),
    # Wrong field combinations and names.
    case("gif-job-with-a-video-template",
         lambda h: h.client.create_gif_job(h.face_media, VIDEO_TEMPLATE), INVALID, "GIF template"),
    case("video-job-with-a-gif-template",
         lambda h: _video_job(h, speech_wav(), "me.wav", template=GIF_TEMPLATE), INVALID,
         "video template"),
    case("face-media-naming-a-template",
         lambda h: h.client.create_gif_job(GIF_TEMPLATE, GIF_TEMPLATE), INVALID, "media/"),
    case("template-naming-a-media",
         lambda h: h.client.create_gif_job(h.face_media, h.face_media), INVALID, "templates/"),
    case("gif-job-with-empty-face-media",
         lambda h: h.client.create_gif_job("", GIF_TEMPLATE), INVALID, "face_media"),
    case("video-job-with-empty-voice-media",
         lambda h: h.client.create_video_job(h.face_media, "", VIDEO_TEMPLATE), INVALID,
         "voice_media"),
    case("video-job-with-empty-template",
         lambda h: h.client.create_video_job(h.face_media, h.voice_media, ""), INVALID,
         "template"),
    case("get-job-with-empty-name", lambda h: h.client.get_job(""), INVALID, "jobs/"),
    case("get-template-by-path-traversal",
         lambda h: h.client.templates.GetTemplate(
             templates_pb2.GetTemplateRequest(name="templates/../../builtin/astronaut-sway"),
             timeout=TIMEOUT),
         INVALID, "templates/"),
    case("get-media-by-path-traversal",
         lambda h: h.client.media.GetMedia(
             uploads_pb2.GetMediaRequest(name="media/../../../etc/passwd"), timeout=TIMEOUT),
         INVALID, "media/"),
    case("finish-upload-by-path-traversal",
         lambda h: _finish(h, "uploads/../parts/" + "0" * 32), INVALID, "uploads/"),
    case("get-template-with-cyrillic-and-emoji-name",
         lambda h: h.client.templates.GetTemplate(
             templates_pb2.GetTemplateRequest(name="templates/астронавт-🚀"), timeout=TIMEOUT),
         INVALID, "templates/"),
    case("get-job-with-right-to-left-override-and-fullwidth-digits",
         lambda h: h.client.get_job("jobs/\u202e" + "０" * 31), INVALID, "jobs/"),
    case("get-media-url-of-an-upload-name",
         lambda h: h.client.media.GetMediaUrl(
             uploads_pb2.GetMediaUrlRequest(name="uploads/" + "0" * 32), timeout=TIMEOUT),
         INVALID, "media/"),
    case("get-job-of-another-tenant",
         lambda h: h.client.get_job(h.other_tenant_job), NOT_FOUND, "does not exist"),
    case("cancel-job-of-another-tenant",
         lambda h: h.client.jobs.CancelJob(
             jobs_pb2.CancelJobRequest(name=h.other_tenant_job), timeout=TIMEOUT),
         NOT_FOUND, "does not exist"),
    case("gif-job-with-another-tenants-photo",
         lambda h: h.client.create_gif_job(h.other_tenant_media, GIF_TEMPLATE), NOT_FOUND,
         "does not exist"),
    case("download-another-tenants-media",
         lambda h: h.client.download(h.other_tenant_media), NOT_FOUND, "does not exist"),
    case("append-to-another-tenants-upload",
         lambda h: _append(h, h.other_tenant_upload, 0, b"chunk"), NOT_FOUND, "does not exist"),
    case("unknown-faceswap-engine",
         lambda h: h.client.create_gif_job(h.face_media, GIF_TEMPLATE, "deepfake-9000"), INVALID,
         "Unknown engine"),
    case("video-job-with-an-engine-of-another-service",
         lambda h: _video_job(h, speech_wav(), "me.wav", voice_engine="mouth_motion"), INVALID,
         "Unknown engine"),
    case("list-jobs-with-negative-page-size",
         lambda h: h.client.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=-5), timeout=TIMEOUT),
         INVALID, "page_size"),
    case("list-jobs-with-another-tenants-page-token",
         lambda h: h.client.jobs.ListJobs(
             jobs_pb2.ListJobsRequest(page_token=f"acme/jobs/{h.other_tenant_job[5:]}.json"),
             timeout=TIMEOUT),
         INVALID, "page_token"),
    # Templates.
    case("gif-template-with-65535x65535-logical-screen",
         lambda h: _create_template(h, gif_template_with_screen(65535, 65535), "t.gif"), INVALID,
         "header"),
    case("gif-template-with-4000x4000-logical-screen",
         lambda h: _create_template(h, gif_template_with_screen(4000, 4000), "t.gif"), EXHAUSTED,
         "1080p"),
    case("ninety-second-video-template",
         lambda h: _create_template(h, ninety_second_video(), "long.mp4"), INVALID, "lasts"),
    case("video-template-without-a-face",
         lambda h: _create_template(h, faceless_video(), "t.mp4"), PRECONDITION, "face"),
    case("audio-sent-as-a-template",
         lambda h: _create_template(h, tone_mp3(2), "t.mp3"), INVALID, "no frames"),
    case("still-photo-sent-as-a-template",
         lambda h: _create_template(h, _astronaut_png(), "t.png"), INVALID, "lasts"),
    case("template-id-with-path-traversal",
         lambda h: _create_template(h, small_gif(), "t.gif", "../../builtin/x"), INVALID,
         "not a valid name"),
    case("template-id-with-a-zero-width-space",
         lambda h: _create_template(h, small_gif(), "t.gif", "astro\u200bnaut"), INVALID,
         "not a valid name"),
    case("template-id-of-a-builtin-template",
         lambda h: _create_template(h, small_gif(), "t.gif", "astronaut-sway"), EXISTS,
         "already exists"),
    case("template-from-empty-media-name",
         lambda h: h.client.templates.CreateTemplate(
             templates_pb2.CreateTemplateRequest(media="", template_id="empty"), timeout=TIMEOUT),
         INVALID, "media/"),
    # Voice recordings: very long, forged, silent.
    case("three-hours-of-low-bitrate-mp3-in-a-video-job",
         lambda h: _video_job(h, hours_of_mp3(1080), "long.mp3"), EXHAUSTED, "limit"),
    case("wav-header-claiming-six-hours-of-silence",
         lambda h: _video_job(h, wav_claiming_hours(), "forged.wav"), PRECONDITION, "speech"),
    case("silent-voice-recording",
         lambda h: _video_job(h, mixes.wav_bytes(np.zeros((44100 * 3, 2), np.float32)),
                              "silence.wav"),
         PRECONDITION, "speech"),
    # Messages and chunks.
    case("append-upload-message-over-the-message-limit",
         lambda h: _append(h, _new_upload(h), 0, OVER_MESSAGE_LIMIT), EXHAUSTED, "larger"),
    case("append-upload-chunk-over-the-chunk-limit",
         lambda h: _append(h, _new_upload(h), 0, bytes(MAX_CHUNK_BYTES + 1)), EXHAUSTED,
         "limited"),
    case("append-upload-at-an-offset-ahead-of-the-data",
         lambda h: _append(h, _new_upload(h), 4096, b"chunk"), PRECONDITION, "offset"),
    case("append-upload-after-finish", _append_after_finish, PRECONDITION, "finished"),
    case("append-upload-beyond-its-declared-size",
         lambda h: _append(h, _new_upload(h, 4), 0, b"chunk"), INVALID, "declared"),
    case("finish-upload-without-data",
         lambda h: _finish(h, _new_upload(h)), PRECONDITION, "no data"),
    case("append-upload-empty-chunk",
         lambda h: _append(h, _new_upload(h), 0, b""), INVALID, "empty"),
    case("declared-upload-size-of-2-to-the-64",
         lambda h: _new_upload(h, 2**64 - 1), EXHAUSTED, "MiB"),
    case("upload-stream-chunk-before-metadata",
         lambda h: _upload_stream(h, uploads_pb2.UploadMediaRequest(chunk=b"data"), METADATA),
         INVALID, "metadata"),
    case("upload-stream-metadata-twice",
         lambda h: _upload_stream(h, METADATA, METADATA), INVALID, "chunks"),
    case("upload-stream-with-nothing-in-it", lambda h: _upload_stream(h), INVALID, "metadata"),
]  # fmt: skip

FACESWAP_CASES = [
    case("empty-photo", lambda h: _prepare_identity(h, b""), INVALID, "empty"),
    case("png-header-claims-100000x100000",
         lambda h: _prepare_identity(h, _png(100_000, 100_000, b"")), EXHAUSTED, "megapixels"),
    case("photo-without-a-face",
         lambda h: _prepare_identity(h, images.encode_image(data.coffee(), "jpeg")), PRECONDITION,
         "face"),
    case("photo-over-the-message-limit",
         lambda h: _prepare_identity(h, OVER_MESSAGE_LIMIT), EXHAUSTED, "larger"),
    case("unknown-engine",
         lambda h: _prepare_identity(h, _astronaut_png(), "wav2lip"), INVALID, "Unknown engine"),
    case("stream-with-nothing-in-it", lambda h: _swap(h), INVALID, "config"),
    case("frame-before-config",
         lambda h: _swap(h, _swap_frame(_astronaut_jpeg()), _swap_config(h)), INVALID, "config"),
    case("config-twice", lambda h: _swap(h, _swap_config(h), _swap_config(h)), INVALID,
         "Only frames"),
    case("undecodable-frame",
         lambda h: _swap(h, _swap_config(h), _swap_frame(b"\xff\xd8\xff" + bytes(500))), INVALID,
         "image"),
    case("truncated-frame",
         lambda h: _swap(h, _swap_config(h), _swap_frame(_astronaut_png()[:4000])), INVALID,
         "truncated"),
    case("frame-over-the-pixel-limit",
         lambda h: _swap(h, _swap_config(h), _swap_frame(frame_png(2500))), EXHAUSTED,
         "megapixels"),
    case("frame-over-the-message-limit",
         lambda h: _swap(h, _swap_config(h), _swap_frame(OVER_MESSAGE_LIMIT)), EXHAUSTED,
         "larger"),
    case("config-without-identity",
         lambda h: _swap(h, faceswap_pb2.SwapFacesRequest(config=faceswap_pb2.SwapConfig())),
         INVALID, "identity"),
    case("identity-with-corrupt-state",
         lambda h: _swap(h, _swap_config(h, engine="landmark_warp", state=b"\x93NUMPY junk")),
         INVALID, "corrupt"),
    case("identity-made-of-lipsync-features",
         lambda h: _swap(h, _swap_config(h, engine="landmark_warp", state=h.features.state)),
         INVALID, "corrupt"),
    case("identity-of-a-lipsync-engine",
         lambda h: _swap(h, _swap_config(h, engine="mouth_motion", state=h.identity.state)),
         INVALID, "Unknown engine"),
]  # fmt: skip

VOICE_CASES = [
    case("probe-empty-recording", lambda h: _probe(h, data=b""), INVALID, "empty"),
    case("probe-text-file", lambda h: _probe(h, data=b"meeting notes, not audio"), INVALID,
         "not a readable"),
    case("probe-over-the-message-limit", lambda h: _probe(h, data=OVER_MESSAGE_LIMIT), EXHAUSTED,
         "larger"),
    case("probe-hundred-minutes-of-low-bitrate-mp3",
         lambda h: _probe(h, data=hours_of_mp3(600)), EXHAUSTED, "limit"),
    case("probe-missing-object",
         lambda h: _probe(h, object=media_pb2.StorageObject(bucket="remind-uploads",
                                                           key="local/nothing-here")),
         NOT_FOUND, "does not exist"),
    case("probe-object-key-with-path-traversal",
         lambda h: _probe(h, object=media_pb2.StorageObject(bucket="remind-uploads",
                                                           key="local/../acme/media")),
         INVALID, "key"),
    case("probe-object-in-an-invalid-bucket",
         lambda h: _probe(h, object=media_pb2.StorageObject(bucket="../..", key="x")), INVALID,
         "bucket"),
    case("chunk-before-config",
         lambda h: _separate(h, _audio_chunk(voice_pb2.SeparateVoiceRequest, speech_wav()),
                             _separation()),
         INVALID, "config"),
    case("config-twice", lambda h: _separate(h, _separation(), _separation()), INVALID,
         "Only audio chunks"),
    case("unknown-stem",
         lambda h: _separate(h, _separation(stems=[7]),
                             _audio_chunk(voice_pb2.SeparateVoiceRequest, speech_wav())),
         INVALID, "Stems"),
    case("pcm-without-a-sample-rate",
         lambda h: _separate(h, _separation(format=pcm(0, 2)),
                             _audio_chunk(voice_pb2.SeparateVoiceRequest, bytes(400))),
         INVALID, "sample rate"),
    case("pcm-with-half-a-frame",
         lambda h: _separate(h, _separation(format=pcm(44100, 2)),
                             _audio_chunk(voice_pb2.SeparateVoiceRequest, bytes(402))),
         INVALID, "frames"),
    case("store-prefix-without-a-key",
         lambda h: _separate(h, _separation(store_prefix=media_pb2.StorageObject(
             bucket="remind-results")),
             _audio_chunk(voice_pb2.SeparateVoiceRequest, speech_wav())),
         INVALID, "store_prefix"),
    case("store-prefix-escaping-its-folder",
         lambda h: _separate(h, _separation(store_prefix=media_pb2.StorageObject(
             bucket="remind-results", key="..")),
             _audio_chunk(voice_pb2.SeparateVoiceRequest, speech_wav())),
         INVALID, "key"),
    case("source-object-missing",
         lambda h: _separate(h, _separation(source=media_pb2.StorageObject(
             bucket="remind-uploads", key="local/nothing-here"))),
         NOT_FOUND, "does not exist"),
    case("chunk-over-the-message-limit",
         lambda h: _separate(h, _separation(),
                             _audio_chunk(voice_pb2.SeparateVoiceRequest, OVER_MESSAGE_LIMIT)),
         EXHAUSTED, "larger"),
    case("engine-of-another-service",
         lambda h: _separate(h, _separation(engine="landmark_warp"),
                             _audio_chunk(voice_pb2.SeparateVoiceRequest, speech_wav())),
         INVALID, "Unknown engine"),
    case("photo-sent-as-the-recording",
         lambda h: _separate(h, _separation(),
                             _audio_chunk(voice_pb2.SeparateVoiceRequest, _astronaut_png())),
         PRECONDITION, "sound track"),
]  # fmt: skip

LIPSYNC_CASES = [
    case("audio-stream-with-nothing-in-it", lambda h: _prepare_audio(h.lipsync), INVALID,
         "config"),
    case("audio-chunk-before-config",
         lambda h: _prepare_audio(h.lipsync,
                                  _audio_chunk(lipsync_pb2.PrepareAudioRequest, speech_wav()),
                                  _audio_config()),
         INVALID, "config"),
    case("audio-config-twice",
         lambda h: _prepare_audio(h.lipsync, _audio_config(), _audio_config()), INVALID,
         "Only audio chunks"),
    case("pcm-without-channels",
         lambda h: _prepare_audio(h.lipsync, _audio_config(pcm(16000, 0)),
                                  _audio_chunk(lipsync_pb2.PrepareAudioRequest, bytes(320))),
         INVALID, "channel"),
    case("three-minutes-of-low-bitrate-mp3",
         lambda h: _prepare_audio(h.lipsync, _audio_config(),
                                  _audio_chunk(lipsync_pb2.PrepareAudioRequest,
                                               quiet_mp3(180))),
         EXHAUSTED, "limit"),
    case("voice-over-32-mib",
         lambda h: _prepare_audio(h.lipsync, _audio_config(pcm(16000, 1)),
                                  *_chunked(lipsync_pb2.PrepareAudioRequest, bytes(33 * 2**20))),
         EXHAUSTED, "MiB"),
    case("audio-chunk-over-the-message-limit",
         lambda h: _prepare_audio(h.lipsync, _audio_config(),
                                  _audio_chunk(lipsync_pb2.PrepareAudioRequest,
                                               OVER_MESSAGE_LIMIT)),
         EXHAUSTED, "larger"),
    case("photo-sent-as-the-voice",
         lambda h: _prepare_audio(h.lipsync, _audio_config(),
                                  _audio_chunk(lipsync_pb2.PrepareAudioRequest, _astronaut_png())),
         (INVALID, PRECONDITION), "audio"),
    case("frame-before-config",
         lambda h: _sync(h, _sync_frame(_astronaut_jpeg()), _sync_config(h)), INVALID, "config"),
    case("sync-config-twice", lambda h: _sync(h, _sync_config(h), _sync_config(h)), INVALID,
         "Only frames"),
    case("features-made-of-a-faceswap-identity",
         lambda h: _sync(h, _sync_config(h, engine="mouth_motion", state=h.identity.state),
                         _sync_frame(_astronaut_jpeg())),
         INVALID, "corrupt"),
    case("features-of-a-faceswap-engine",
         lambda h: _sync(h, _sync_config(h, engine="landmark_warp", state=h.features.state),
                         _sync_frame(_astronaut_jpeg())),
         INVALID, "Unknown engine"),
    case("fps-not-a-number",
         lambda h: _sync(h, _sync_config(h, fps=math.nan)), INVALID, "fps"),
    case("fps-infinite", lambda h: _sync(h, _sync_config(h, fps=math.inf)), INVALID, "fps"),
    case("frame-over-the-pixel-limit",
         lambda h: _sync(h, _sync_config(h), _sync_frame(frame_png(2500))), EXHAUSTED,
         "megapixels"),
    case("frame-over-the-message-limit",
         lambda h: _sync(h, _sync_config(h), _sync_frame(OVER_MESSAGE_LIMIT)), EXHAUSTED,
         "larger"),
    case("gif-header-with-no-image-after-it",
         lambda h: _sync(h, _sync_config(h), _sync_frame(b"GIF89a\x10\x00\x10\x00")), INVALID,
         "truncated"),
]  # fmt: skip

CORPUS = [
    pytest.param(entry, id=f"{service}-{entry.name}")
    for service, entries in (
        ("orchestrator", ORCHESTRATOR_CASES),
        ("faceswap", FACESWAP_CASES),
        ("voice", VOICE_CASES),
        ("lipsync", LIPSYNC_CASES),
    )
    for entry in entries
]


def _refusal(h: Hostile, call: Callable[[Hostile], object]) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with: its own, or, for a job the server accepted, the job's."""
    try:
        result = call(h)
        if isinstance(result, Iterator):
            result = list(result)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    if isinstance(result, jobs_pb2.Job):
        final = list(h.client.watch(result.name, timeout=300))[-1]
        if final.state == jobs_pb2.JOB_STATE_FAILED:
            return STATUS_BY_VALUE[final.error.code], final.error.message
    pytest.fail(f"the request was accepted: {str(result)[:300]}")


def _assert_actionable(details: str) -> None:
    assert details.strip(), "the status has no message"
    assert "Traceback" not in details and 'File "' not in details, details
    assert "Internal error" not in details, details


@pytest.mark.parametrize("entry", CORPUS)
def test_hostile_input_gets_a_clear_status(hostile: Hostile, entry: Case) -> None:
    started = time.monotonic()
    code, details = _refusal(hostile, entry.call)
    assert code in entry.codes, f"{code.name}: {details}"
    _assert_actionable(details)
    assert entry.word.lower() in details.lower(), details
    # Refusals come from headers and limits, not from grinding through the input.
    assert time.monotonic() - started < 45


# ---------------------------------------------------------------------------------------------
# Odd input that is served, sanely
# ---------------------------------------------------------------------------------------------


def test_of_many_faces_the_largest_is_used(hostile: Hostile) -> None:
    """A group photo is not refused: the most prominent face (the largest) becomes the identity,
    and in a frame with several faces it is that one the swap reports."""
    astronaut = data.astronaut()
    small = astronaut[::2, ::2]
    group = np.full((640, 900, 3), 200, np.uint8)
    group[:512, :512] = astronaut
    group[320:576, 620:876] = small
    photo = images.encode_image(group, "png")
    identity = _prepare_identity(hostile, photo).identity
    box = identity.face_box
    assert box.x + box.width / 2 < 512 and box.y + box.height / 2 < 512, box
    swapped = _swap(hostile, _swap_config(hostile), _swap_frame(photo))
    assert len(swapped) == 1 and swapped[0].face_found
    assert swapped[0].face_box.x + swapped[0].face_box.width / 2 < 512, swapped[0].face_box


def test_a_path_in_the_upload_filename_is_reduced_to_a_plain_name(hostile: Hostile) -> None:
    upload = hostile.client.upload(_astronaut_png(), "../../../etc/cron.d/évil name.png")
    assert upload.filename == "_vil_name.png"
    assert hostile.client.download(upload.name) == _astronaut_png()


def test_silence_gives_a_resting_mouth_not_an_error(hostile: Hostile) -> None:
    silence = bytes(16000 * 2 * 2)
    features = _prepare_audio(
        hostile.lipsync,
        _audio_config(pcm(16000, 1)),
        _audio_chunk(lipsync_pb2.PrepareAudioRequest, silence),
    ).features
    assert features.duration_seconds == pytest.approx(2.0)
    frames = _sync(
        hostile,
        _sync_config(hostile, engine=features.engine, state=features.state),
        _sync_frame(_astronaut_png()),
    )
    assert len(frames) == 1 and frames[0].face_found


# ---------------------------------------------------------------------------------------------
# Properties of request validation
# ---------------------------------------------------------------------------------------------

PREFIXES = ("", "jobs/", "media/", "templates/", "uploads/", "jobs/../", "media//")
HEX_ID = st.from_regex(r"\A[0-9a-f]{32}\Z")
names = st.one_of(
    st.text(max_size=80),
    st.tuples(st.sampled_from(PREFIXES), st.text(max_size=60)).map("".join),
    st.tuples(st.sampled_from(PREFIXES), HEX_ID).map("".join),
    st.tuples(
        st.sampled_from(PREFIXES), st.text("abcdefghijklmnopqrstuvwxyz0123456789-./", max_size=70)
    ).map("".join),
)


def _name_calls(h: Hostile) -> dict[str, Callable[[str], object]]:
    jobs, templates, uploads = h.client.jobs, h.client.templates, h.client.media
    return {
        "GetJob": lambda name: jobs.GetJob(jobs_pb2.GetJobRequest(name=name), timeout=TIMEOUT),
        "CancelJob": lambda name: jobs.CancelJob(
            jobs_pb2.CancelJobRequest(name=name), timeout=TIMEOUT
        ),
        "WatchJob": lambda name: list(
            jobs.WatchJob(jobs_pb2.WatchJobRequest(name=name), timeout=TIMEOUT)
        ),
        "GetTemplate": lambda name: templates.GetTemplate(
            templates_pb2.GetTemplateRequest(name=name), timeout=TIMEOUT
        ),
        "GetMedia": lambda name: uploads.GetMedia(
            uploads_pb2.GetMediaRequest(name=name), timeout=TIMEOUT
        ),
        "GetMediaUrl": lambda name: uploads.GetMediaUrl(
            uploads_pb2.GetMediaUrlRequest(name=name), timeout=TIMEOUT
        ),
        "DownloadMedia": lambda name: list(
            uploads.DownloadMedia(uploads_pb2.DownloadMediaRequest(name=name), timeout=TIMEOUT)
        ),
        "FinishUpload": lambda name: _finish(h, name),
        "CreateGifJob.face_media": lambda name: h.client.create_gif_job(name, GIF_TEMPLATE),
        "CreateGifJob.template": lambda name: h.client.create_gif_job(h.face_media, name),
        "CreateVideoJob.voice_media": lambda name: h.client.create_video_job(
            h.face_media, name, VIDEO_TEMPLATE
        ),
        "CreateTemplate.media": lambda name: templates.CreateTemplate(
            templates_pb2.CreateTemplateRequest(media=name, template_id="never-made"),
            timeout=TIMEOUT,
        ),
    }


NAME_METHODS = [
    "GetJob", "CancelJob", "WatchJob", "GetTemplate", "GetMedia", "GetMediaUrl",
    "DownloadMedia", "FinishUpload", "CreateGifJob.face_media", "CreateGifJob.template",
    "CreateVideoJob.voice_media", "CreateTemplate.media",
]  # fmt: skip


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    _assert_actionable(caught.value.details() or "")
    return caught.value


@BOUNDED
@given(method=st.sampled_from(NAME_METHODS), name=names)
def test_any_name_is_invalid_argument_or_not_found(hostile: Hostile, method: str, name: str):
    error = _refused(lambda: _name_calls(hostile)[method](name))
    assert error.code() in (INVALID, NOT_FOUND), f"{method}({name!r}): {error.details()}"


MAGIC = (b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", b"\xff\xd8\xff\xc0\x00\x11\x08",
         b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8X", b"RIFF\x00\x00\x00\x00WEBPVP8L")  # fmt: skip
photo_bytes = st.tuples(st.sampled_from(MAGIC), st.binary(max_size=2048)).map(b"".join)
PHOTO_REFUSALS = (INVALID, EXHAUSTED, PRECONDITION)


@BOUNDED
@given(photo=photo_bytes)
def test_any_bytes_as_a_photo_are_refused_by_faceswap(hostile: Hostile, photo: bytes):
    error = _refused(lambda: _prepare_identity(hostile, photo))
    assert error.code() in PHOTO_REFUSALS, f"{photo[:40]!r}: {error.details()}"


@settings(BOUNDED, max_examples=20)
@given(photo=photo_bytes.filter(bool))
def test_any_bytes_as_a_photo_are_refused_by_the_public_api(hostile: Hostile, photo: bytes):
    error = _refused(lambda: _gif_job(hostile, photo, "photo"))
    assert error.code() in PHOTO_REFUSALS, f"{photo[:40]!r}: {error.details()}"


@pytest.fixture(scope="module")
def half_sent_upload(hostile: Hostile) -> str:
    """An upload that has received 10 bytes."""
    upload = _new_upload(hostile, 64)
    _append(hostile, upload, 0, b"0123456789")
    return upload


@BOUNDED
@given(offset=st.integers(min_value=0, max_value=2**64 - 1).filter(lambda offset: offset != 10))
def test_a_chunk_at_any_other_offset_is_refused_and_changes_nothing(
    hostile: Hostile, half_sent_upload: str, offset: int
):
    error = _refused(lambda: _append(hostile, half_sent_upload, offset, b"more"))
    assert error.code() == PRECONDITION and "resend from offset 10" in error.details()
    # The offset check passes at 10 and the empty chunk is refused after it: still 10 bytes.
    error = _refused(lambda: _append(hostile, half_sent_upload, 10, b""))
    assert error.code() == INVALID and "empty" in error.details()


@settings(BOUNDED, max_examples=25)
@given(
    size=st.one_of(
        st.integers(0, 2**64 - 1), st.integers(MAX_UPLOAD_BYTES - 2, MAX_UPLOAD_BYTES + 2)
    )
)
def test_any_declared_upload_size_is_accepted_up_to_the_limit(hostile: Hostile, size: int):
    if size == 0:  # the size must be declared: the upload never takes more
        assert _refused(lambda: _new_upload(hostile, size)).code() == INVALID
    elif size <= MAX_UPLOAD_BYTES:
        assert _new_upload(hostile, size).startswith("uploads/")
    else:
        assert _refused(lambda: _new_upload(hostile, size)).code() == EXHAUSTED


@BOUNDED
@given(fps=st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_any_fps_outside_the_range_is_invalid_argument(hostile: Hostile, fps: float):
    call = lambda: _sync(hostile, _sync_config(hostile, fps=fps))  # noqa: E731
    if 0 < fps <= MAX_FPS:
        assert call() == []
    else:
        error = _refused(call)
        assert error.code() == INVALID and "fps" in error.details()


# JobBoard.list: page_size 0 asks for the server's default page, and no page is longer than
# the maximum, whatever the request asks.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
JOB_NAME = re.compile(r"\Ajobs/[0-9a-f]{32}\Z")


def _list(client: RemindClient, page_size: int, page_token: str = "") -> jobs_pb2.ListJobsResponse:
    return client.jobs.ListJobs(
        jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token), timeout=TIMEOUT
    )


def _pages(client: RemindClient, page_size: int) -> list[list[str]]:
    """Every page of the tenant's jobs, following the page tokens to the end."""
    pages, token, tokens_seen = [], "", set()
    while True:
        page = _list(client, page_size, token)
        pages.append([job.name for job in page.jobs])
        token = page.next_page_token
        if not token:
            return pages
        assert token not in tokens_seen, f"page token {token!r} came back twice"
        tokens_seen.add(token)
        assert len(pages) <= 1000, "the page tokens never end"


def _every_job(client: RemindClient) -> list[str]:
    return [name for page in _pages(client, MAX_PAGE_SIZE) for name in page]


@pytest.fixture(scope="module")
def listed(hostile: Hostile) -> list[str]:
    """The local tenant's jobs, at least three of them, all ended (so the list is stable)."""
    for _ in range(3 - len(_every_job(hostile.client))):
        # Accepted, then failed by the voice stage: a job record and no result.
        silence = mixes.wav_bytes(np.zeros((44100 * 3, 2), np.float32))
        job = _video_job(hostile, silence, "silence.wav")
        list(hostile.client.watch(job.name, timeout=300))
    _wait_for_every_job(hostile.info)
    return _every_job(hostile.client)


def test_listed_jobs_are_the_tenants_own_newest_first(hostile: Hostile, listed: list[str]):
    assert len(listed) == len(set(listed)) >= 3, listed
    assert all(JOB_NAME.match(name) for name in listed), listed
    assert hostile.other_tenant_job not in listed
    created = [
        hostile.client.jobs.GetJob(jobs_pb2.GetJobRequest(name=name), timeout=TIMEOUT).job
        for name in listed
    ]
    assert [job.name for job in created] == listed
    times = [job.create_time.ToNanoseconds() for job in created]
    assert times == sorted(times, reverse=True), "jobs are listed newest first"
    with RemindClient(hostile.info.orchestrator_address, hostile.info.api_keys["acme"]) as acme:
        theirs = _every_job(acme)
        assert hostile.other_tenant_job in theirs
        assert not set(theirs) & set(listed), "a job is listed for two tenants"
        for name in listed:
            with pytest.raises(grpc.RpcError) as caught:
                acme.get_job(name)
            assert caught.value.code() == NOT_FOUND, name


@pytest.mark.parametrize("page_size", [1, 2, 3, 0, MAX_PAGE_SIZE, 2**31 - 1])
def test_page_tokens_chain_through_every_job_once(
    hostile: Hostile, listed: list[str], page_size: int
):
    pages = _pages(hostile.client, page_size)
    expected = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    assert all(len(page) == expected for page in pages[:-1]), [len(page) for page in pages]
    assert 1 <= len(pages[-1]) <= expected
    assert [name for page in pages for name in page] == listed


@BOUNDED
@given(
    page_size=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 8)),
    page_token=st.one_of(st.just(""), names),
)
@example(page_size=1, page_token="")
@example(page_size=2, page_token="")
@example(page_size=0, page_token="")
@example(page_size=2**31 - 1, page_token="")
@example(page_size=-1, page_token="")
@example(page_size=5, page_token="jobs/" + "0" * 32)
def test_any_listing_request_lists_or_is_invalid_argument(
    hostile: Hostile, listed: list[str], page_size: int, page_token: str
):
    # No generated token is one this server handed out, so any token is refused.
    try:
        page = _list(hostile.client, page_size, page_token)
    except grpc.RpcError as error:
        assert error.code() == INVALID, error.details()
        _assert_actionable(error.details())
        assert page_size < 0 or page_token, f"{page_size}, {page_token!r}: {error.details()}"
        field = "page_size" if page_size < 0 else "page_token"
        assert field in error.details(), error.details()
        return
    assert page_size >= 0 and not page_token, f"accepted {page_size}, {page_token!r}"
    expected = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    assert [job.name for job in page.jobs] == listed[:expected]
    if len(listed) > expected:
        assert page.next_page_token, "a partial page must give a token to the next"
        rest = _list(hostile.client, expected, page.next_page_token)
        assert [job.name for job in rest.jobs] == listed[expected : 2 * expected]
    else:
        assert page.next_page_token == ""


@BOUNDED
@given(bucket=st.one_of(st.just("remind-uploads"), st.text(max_size=70)), key=st.text(max_size=300))
def test_any_stored_object_name_for_the_voice_is_invalid_argument_or_not_found(
    hostile: Hostile, bucket: str, key: str
):
    storage_object = media_pb2.StorageObject(bucket=bucket, key=key)
    error = _refused(lambda: _probe(hostile, object=storage_object))
    assert error.code() in (INVALID, NOT_FOUND), f"{bucket!r}/{key!r}: {error.details()}"


# ---------------------------------------------------------------------------------------------
# Afterwards
# ---------------------------------------------------------------------------------------------


def test_after_all_of_it_every_server_serves_and_nothing_stored_changed(
    hostile: Hostile, store: ObjectStore
):
    info = hostile.info
    for address in (
        info.orchestrator_address,
        info.faceswap_address,
        info.voice_address,
        info.lipsync_address,
    ):
        assert _healthy(address), address
    _wait_for_every_job(info)
    assert _snapshot(store) == hostile.stored_before, "hostile input changed stored objects"
