"""Memory is bounded by bytes, not pixels: each service, a real process of the local stack, is
given the costliest inputs we can craft (16-bit transparent PNGs, headers claiming giant
images, a 1080p GIF template through a GIF job) while its resident memory, and that of the
ffmpeg processes it starts, is watched from /proc. Each call ends with a clear status or
succeeds, and the memory it took stays under the stated bound.
"""

from __future__ import annotations

import functools
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
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
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services import samples
from services.client import RemindClient
from services.shared import images
from services.stack import LocalStack, StackInfo
from tests.support.memory import MIB, PeakMemory

TIMEOUT = 120
OK = grpc.StatusCode.OK
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
CONTAINER = media_pb2.AudioFormat(encoding=media_pb2.AUDIO_ENCODING_CONTAINER)
# What one photo may add to the faceswap server: decoding the largest photo allowed (40
# megapixels of 8-bit RGB, or fewer of deeper or transparent ones) takes 229 MiB.
PHOTO_BOUND = 300 * MIB
# What eight of the largest photos at once may add: the shared decode budget, and the decoded
# photos the detector works on.
CONCURRENT_PHOTOS_BOUND = 1024 * MIB
# What one frame or one refused recording may add to any service.
FRAME_BOUND = 64 * MIB
# What a GIF job on a 1080p template may add to the orchestrator and its ffmpeg processes.
GIF_JOB_BOUND = 400 * MIB


# --- Costly inputs -----------------------------------------------------------------------------


@functools.cache
def png16_rgba(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG: 8 bytes a pixel once decoded, a few hundred kB as a file."""
    pixels = np.zeros((height, width, 4), np.uint16)
    pixels[::97, ::89] = 40000
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return encoded.tobytes()


@functools.cache
def jpeg(side: int) -> bytes:
    """The largest kind of photo the faceswap service decodes: 8-bit RGB, 36 megapixels."""
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[::97, ::89] = 200
    return images.encode_image(pixels, "jpeg")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming a giant 16-bit RGBA image, with a few bytes of data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(4096))) + chunk(b"IEND", b"")
    )  # fmt: skip


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header is rewritten to claim another size."""
    forged = bytearray(jpeg(64))
    start = forged.find(b"\xff\xc0")
    forged[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(forged)


@functools.cache
def long_mp3() -> bytes:
    """100 minutes of 8 kb/s silence without a Xing header: 6 MB to send."""
    with tempfile.TemporaryDirectory() as work:
        ten_seconds = Path(work) / "ten.mp3"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "10",
             "-b:a", "8k", "-write_xing", "0", str(ten_seconds)],
            check=True,
        )  # fmt: skip
        return ten_seconds.read_bytes() * 600


def face_gif_1080p(path: Path, seconds: float, fps: int) -> None:
    """A 1080p GIF template: the astronaut's face moving over a grey background."""
    face = path.with_suffix(".png")
    face.write_bytes(images.encode_image(data.astronaut(), "png"))
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"color=c=gray:size=1920x1080:rate={fps}:duration={seconds}",
         "-i", str(face),
         "-filter_complex",
         "[0][1]overlay=x=700+40*sin(t*3):y=280+20*cos(t*2),split[a][b];"
         "[a]palettegen=max_colors=128[p];[b][p]paletteuse=dither=none",
         "-f", "gif", str(path)],
        check=True,
    )  # fmt: skip


# --- Calls -------------------------------------------------------------------------------------


@dataclass
class Services:
    info: StackInfo
    faceswap: faceswap_pb2_grpc.FaceSwapServiceStub
    lipsync: lipsync_pb2_grpc.LipSyncServiceStub
    voice: voice_pb2_grpc.VoiceServiceStub
    identity: faceswap_pb2.FaceIdentity
    features: lipsync_pb2.AudioFeatures


@pytest.fixture(scope="module")
def services(stack: LocalStack):  # type: ignore[no-untyped-def]
    # Brings back anything an earlier test stopped on purpose; the pids are today's.
    stack_info = stack.start()
    options = [("grpc.max_send_message_length", 64 * MIB)]
    channels = [
        grpc.insecure_channel(stack_info.address(name), options=options)
        for name in ("faceswap", "lipsync", "voice")
    ]
    faceswap = faceswap_pb2_grpc.FaceSwapServiceStub(channels[0])
    lipsync = lipsync_pb2_grpc.LipSyncServiceStub(channels[1])
    identity = faceswap.PrepareIdentity(
        faceswap_pb2.PrepareIdentityRequest(
            photo=media_pb2.EncodedImage(data=images.encode_image(data.astronaut(), "png"))
        ),
        timeout=TIMEOUT,
    ).identity
    speech = samples.wav_bytes(samples.speech("en-us", "Hello there, this is my voice.", 3.0))
    features = lipsync.PrepareAudio(
        iter(
            [
                lipsync_pb2.PrepareAudioRequest(
                    config=lipsync_pb2.PrepareAudioConfig(format=CONTAINER)
                ),
                lipsync_pb2.PrepareAudioRequest(chunk=media_pb2.AudioChunk(data=speech)),
            ]
        ),
        timeout=TIMEOUT,
    ).features
    yield Services(
        stack_info,
        faceswap,
        lipsync,
        voice_pb2_grpc.VoiceServiceStub(channels[2]),
        identity,
        features,
    )
    for channel in channels:
        channel.close()


def prepare_identity(photo: bytes) -> Callable[[Services], object]:
    return lambda s: s.faceswap.PrepareIdentity(
        faceswap_pb2.PrepareIdentityRequest(photo=media_pb2.EncodedImage(data=photo)),
        timeout=TIMEOUT,
    )


def _frame(image: bytes) -> media_pb2.Frame:
    return media_pb2.Frame(index=0, image=media_pb2.EncodedImage(data=image))


def swap_frame(image: bytes) -> Callable[[Services], object]:
    def call(s: Services) -> object:
        requests = [
            faceswap_pb2.SwapFacesRequest(config=faceswap_pb2.SwapConfig(identity=s.identity)),
            faceswap_pb2.SwapFacesRequest(frame=_frame(image)),
        ]
        return list(s.faceswap.SwapFaces(iter(requests), timeout=TIMEOUT))

    return call


def sync_frame(image: bytes) -> Callable[[Services], object]:
    def call(s: Services) -> object:
        config = lipsync_pb2.LipSyncConfig(features=s.features, fps=25.0)
        requests = [
            lipsync_pb2.SyncLipsRequest(config=config),
            lipsync_pb2.SyncLipsRequest(frame=_frame(image)),
        ]
        return list(s.lipsync.SyncLips(iter(requests), timeout=TIMEOUT))

    return call


def probe_audio(recording: bytes) -> Callable[[Services], object]:
    return lambda s: s.voice.ProbeAudio(
        voice_pb2.ProbeAudioRequest(data=recording), timeout=TIMEOUT
    )


@dataclass(frozen=True)
class Case:
    name: str
    service: str
    call: Callable[[Services], object]
    code: grpc.StatusCode
    bound: int


CASES = [
    # 6000x6000 at 16 bits and 4 channels: 275 MiB decoded, ~1.6 GiB before the budget.
    Case("16-bit-rgba-png-of-36-megapixels", "faceswap",
         prepare_identity(png16_rgba(6000, 6000)), EXHAUSTED, PHOTO_BOUND),
    Case("16-bit-rgba-png-just-within-the-budget", "faceswap",
         prepare_identity(png16_rgba(3800, 3800)), PRECONDITION, PHOTO_BOUND),
    Case("8-bit-jpeg-of-36-megapixels", "faceswap",
         prepare_identity(jpeg(6000)), PRECONDITION, PHOTO_BOUND),
    Case("png-header-claiming-100000x100000", "faceswap",
         prepare_identity(png_claiming(100_000, 100_000)), EXHAUSTED, FRAME_BOUND),
    Case("jpeg-header-claiming-65535x65535", "faceswap",
         prepare_identity(jpeg_claiming(65535, 65535)), EXHAUSTED, FRAME_BOUND),
    Case("16-bit-rgba-1080p-frame-to-swap", "faceswap",
         swap_frame(png16_rgba(1920, 1080)), EXHAUSTED, FRAME_BOUND),
    Case("16-bit-rgba-1080p-frame-to-lip-sync", "lipsync",
         sync_frame(png16_rgba(1920, 1080)), EXHAUSTED, FRAME_BOUND),
    Case("png-header-bomb-frame-to-lip-sync", "lipsync",
         sync_frame(png_claiming(100_000, 100_000)), EXHAUSTED, FRAME_BOUND),
    Case("hundred-minutes-of-mp3-to-probe", "voice",
         probe_audio(long_mp3()), EXHAUSTED, FRAME_BOUND),
]  # fmt: skip


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_costly_input_gets_a_clear_status_within_a_memory_bound(
    services: Services, case: Case
) -> None:
    with PeakMemory(services.info.pids[case.service]) as memory:
        code, message = _status(lambda: case.call(services))
    print(f"{case.name}: {code.name}; {memory.report()}")
    assert code == case.code, message
    if code == EXHAUSTED:
        assert "MiB" in message or "megapixels" in message or "limit" in message, message
    assert memory.growth < case.bound, memory.report()


def test_verifying_a_16_bit_png_is_refused_within_a_memory_bound(
    client: RemindClient, stack: LocalStack
) -> None:
    photo = client.upload(png16_rgba(6000, 6000), "deep.png")
    with PeakMemory(stack.start().pids["orchestrator"]) as memory:
        code, message = _status(lambda: client.verify(photo.name))
    print(f"verify 16-bit PNG: {code.name}; {memory.report()}")
    assert code == EXHAUSTED and "16-bit PNG with transparency" in message, message
    assert memory.growth < FRAME_BOUND, memory.report()


def test_gif_job_on_a_1080p_template_stays_within_a_memory_bound(
    client: RemindClient, stack: LocalStack, tmp_path: Path
) -> None:
    # 100 frames of 1080p: 600 MiB of pixels, which a one-pass GIF encoder holds at once.
    template_path = tmp_path / "wide.gif"
    face_gif_1080p(template_path, seconds=4, fps=25)
    upload = client.upload(template_path.read_bytes(), "wide.gif")
    template = client.templates.CreateTemplate(
        templates_pb2.CreateTemplateRequest(media=upload.name, template_id="wide-1080p"),
        timeout=TIMEOUT,
    ).template
    assert (template.width, template.height, template.frame_count) == (1920, 1080, 100)
    photo = client.upload(images.encode_image(samples.sample_face_photo(0), "png"), "me.png")

    with PeakMemory(stack.start().pids["orchestrator"]) as memory:
        job = client.create_gif_job(photo.name, template.name)
        final = list(client.watch(job.name, timeout=900))[-1]
    print(f"1080p GIF job: {jobs_pb2.JobState.Name(final.state)}; {memory.report()}")
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.result.frames_total == 100
    assert memory.growth < GIF_JOB_BOUND, memory.report()


def test_photos_decoded_at_once_share_one_memory_budget(services: Services) -> None:
    """Each photo is bounded on its own; eight of the largest at once share the process's
    decode budget (images.DECODE_BUDGET, 768 MiB) instead of adding theirs up."""
    photo = jpeg(6000)
    with PeakMemory(services.info.pids["faceswap"]) as memory:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(
                pool.map(lambda _: _status(lambda: prepare_identity(photo)(services)), range(8))
            )
    print(f"8 photos of 36 megapixels at once: {outcomes}; {memory.report()}")
    for code, message in outcomes:
        assert code in (OK, PRECONDITION) or (code == EXHAUSTED and "retry" in message), message
    assert memory.growth < CONCURRENT_PHOTOS_BOUND, memory.report()
