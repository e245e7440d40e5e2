"""The lipsync service over real gRPC on loopback: real speech (espeak-ng, English and Korean),
frames of a real face, both engines, and bad input ending in clear statuses."""

from __future__ import annotations

import io
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
from remind.v1 import lipsync_pb2, lipsync_pb2_grpc, media_pb2
from scipy import signal
from skimage import data

from services.lipsync.config import LipSyncSettings
from services.lipsync.server import start
from services.lipsync.wav2lip import files
from services.lipsync.wav2lip.checkpoints import save_training_checkpoint
from services.lipsync.wav2lip.network import Wav2Lip
from services.shared import images
from services.shared.audio import to_pcm_s16le
from services.shared.faces import default_analyzer

FPS = 15.0
IDLE_TIMEOUT = 1.5
SPEECH = {
    "en": ("en", "Hello there. My name is Eileen, and I flew the space shuttle. Today I am "
                 "talking to you about the stars, the moon and our beautiful blue planet."),
    "ko": ("ko", "안녕하세요. 저는 우주 비행사입니다. 오늘은 별과 달, 그리고 아름다운 "
                 "지구에 대해 이야기하겠습니다."),
}  # fmt: skip


@pytest.fixture(scope="module")
def lipsync(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[lipsync_pb2_grpc.LipSyncServiceStub]:
    models = tmp_path_factory.mktemp("models")
    save_training_checkpoint(
        Wav2Lip(), models / files.CHECKPOINTS["wav2lip_gan"].path, data_parallel=True
    )
    settings = LipSyncSettings(
        port=0,
        models_dir=str(models),
        request_idle_timeout_seconds=IDLE_TIMEOUT,
        max_audio_seconds=20.0,
        batch_max_size=4,
        shutdown_grace_seconds=1.0,
    )
    running = start(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield lipsync_pb2_grpc.LipSyncServiceStub(channel)
    channel.close()
    running.stop()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speech")
    paths = {}
    for name, (voice, text) in SPEECH.items():
        paths[name] = folder / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(paths[name]), text], check=True)
    return paths


def _prepare(
    stub: lipsync_pb2_grpc.LipSyncServiceStub,
    engine: str,
    audio: bytes,
    audio_format: media_pb2.AudioFormat,
    chunk_bytes: int = 64 * 1024,
) -> lipsync_pb2.AudioFeatures:
    def requests() -> Iterator[lipsync_pb2.PrepareAudioRequest]:
        yield lipsync_pb2.PrepareAudioRequest(
            config=lipsync_pb2.PrepareAudioConfig(engine=engine, format=audio_format)
        )
        for offset in range(0, len(audio), chunk_bytes):
            chunk = media_pb2.AudioChunk(data=audio[offset : offset + chunk_bytes])
            yield lipsync_pb2.PrepareAudioRequest(chunk=chunk)

    return stub.PrepareAudio(requests(), timeout=60).features


CONTAINER = media_pb2.AudioFormat(encoding=media_pb2.AUDIO_ENCODING_CONTAINER)


def _pcm(path: Path) -> tuple[bytes, media_pb2.AudioFormat]:
    samples, rate = soundfile.read(path, dtype="int16")
    audio_format = media_pb2.AudioFormat(
        encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=rate, channels=1
    )
    return samples.astype("<i2").tobytes(), audio_format


def _sync(
    stub: lipsync_pb2_grpc.LipSyncServiceStub,
    features: lipsync_pb2.AudioFeatures,
    frames: list[np.ndarray],
    fps: float = FPS,
) -> list[lipsync_pb2.SyncLipsResponse]:
    def requests() -> Iterator[lipsync_pb2.SyncLipsRequest]:
        yield lipsync_pb2.SyncLipsRequest(
            config=lipsync_pb2.LipSyncConfig(
                features=features, fps=fps, output_format=media_pb2.IMAGE_FORMAT_PNG
            )
        )
        for index, frame in enumerate(frames):
            image = media_pb2.EncodedImage(
                data=images.encode_image(frame, "png"), format=media_pb2.IMAGE_FORMAT_PNG
            )
            yield lipsync_pb2.SyncLipsRequest(frame=media_pb2.Frame(index=index, image=image))

    return list(stub.SyncLips(requests(), timeout=300))


def _decoded(response: lipsync_pb2.SyncLipsResponse) -> np.ndarray:
    return images.decode_image(response.image.data, 4096 * 4096)


def _loudness_at_frames(path: Path, count: int, fps: float) -> np.ndarray:
    samples, rate = soundfile.read(path, dtype="float64")
    levels = []
    for index in range(count):
        window = samples[int(index / fps * rate) : int((index + 1) / fps * rate)]
        rms = np.sqrt(np.mean(window**2)) if len(window) else 0.0
        levels.append(20 * np.log10(rms + 1e-4))
    return np.array(levels)


def _mouth_opening(image: np.ndarray) -> float:
    """Inner-lip gap over mouth width, from dlib's 68 landmarks of the output frame."""
    face = default_analyzer().primary_face(image)
    assert face is not None, "the output frame lost its face"
    points = face.landmarks
    pairs = ((61, 67), (62, 66), (63, 65))
    gap = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in pairs])
    return float(gap / np.linalg.norm(points[54] - points[48]))


def test_both_engines_are_listed_and_wav2lip_is_the_default(lipsync) -> None:
    listed = lipsync.ListLipSyncEngines(lipsync_pb2.ListLipSyncEnginesRequest(), timeout=10)
    assert {engine.name: engine.ready for engine in listed.engines} == {
        "wav2lip": True,
        "mouth_motion": True,
    }
    assert listed.default_engine == "wav2lip"


@pytest.mark.parametrize("language", ["en", "ko"])
def test_mouth_motion_opens_the_mouth_with_the_voice(lipsync, speech, language: str) -> None:
    path = speech[language]
    if language == "en":
        features = _prepare(lipsync, "mouth_motion", path.read_bytes(), CONTAINER)
    else:
        features = _prepare(lipsync, "mouth_motion", *_pcm(path))
    assert features.engine == "mouth_motion"
    count = int(features.duration_seconds * FPS)
    face = data.astronaut()
    blank = np.full_like(face, 200)
    frames = [face] * count
    frames[5] = blank  # a frame without a face, mid-stream
    responses = _sync(lipsync, features, frames)

    assert [response.index for response in responses] == list(range(count))
    assert all(response.engine == "mouth_motion" for response in responses)
    assert not responses[5].face_found and not responses[5].HasField("mouth_box")
    assert np.array_equal(_decoded(responses[5]), blank)
    spoken = [index for index in range(count) if index != 5]
    assert all(responses[index].face_found for index in spoken)

    openings = np.array([_mouth_opening(_decoded(responses[index])) for index in spoken])
    loudness = _loudness_at_frames(path, count, FPS)[spoken]
    r = float(np.corrcoef(openings, loudness)[0, 1])
    print(f"\n{language}: Pearson r(mouth opening, loudness) = {r:.3f} over {len(spoken)} frames")
    assert r >= 0.5
    assert openings.max() - openings.min() > 0.1  # visibly moving, not a twitch


def test_wav2lip_returns_every_frame_in_order_and_passes_faceless_ones(lipsync, speech) -> None:
    features = _prepare(lipsync, "wav2lip", speech["en"].read_bytes(), CONTAINER)
    assert features.engine == "wav2lip" and features.duration_seconds > 3
    face = data.astronaut()
    blank = np.full_like(face, 30)
    frames = [face, face, blank, face, face, face]
    responses = _sync(lipsync, features, frames, fps=25.0)
    assert [response.index for response in responses] == list(range(6))
    assert [response.face_found for response in responses] == [True, True, False, True, True, True]
    assert all(response.engine == "wav2lip" for response in responses)
    assert np.array_equal(_decoded(responses[2]), blank)
    box = responses[0].mouth_box
    assert box.width > 0 and box.height > 0
    output = _decoded(responses[0])
    above_mouth = slice(0, box.y)
    assert np.array_equal(output[above_mouth], face[above_mouth])


def _status(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        result = call()
        if not isinstance(result, lipsync_pb2.PrepareAudioResponse):
            list(result)
    return raised.value.code()


def test_bad_audio_gets_a_clear_status(lipsync, speech) -> None:
    wav = speech["en"].read_bytes()
    pcm, pcm_format = _pcm(speech["en"])

    def prepare(audio: bytes, audio_format: media_pb2.AudioFormat, engine: str = "auto"):
        return lambda: _prepare(lipsync, engine, audio, audio_format)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert _status(prepare(wav, pcm_format)) == invalid  # a WAV file declared as raw PCM
    assert _status(prepare(pcm + b"\x00", pcm_format)) == invalid  # half a sample
    assert _status(prepare(b"", pcm_format)) == invalid
    assert _status(prepare(b"\x00" * 100, CONTAINER)) == invalid  # not a container
    assert _status(prepare(pcm, media_pb2.AudioFormat())) == invalid  # no encoding
    assert _status(prepare(wav, CONTAINER, engine="nope")) == invalid
    too_long = np.zeros(16000 * 21, dtype="<i2").tobytes()
    long_format = media_pb2.AudioFormat(
        encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=16000, channels=1
    )
    assert _status(prepare(too_long, long_format)) == grpc.StatusCode.RESOURCE_EXHAUSTED

    def chunks_first():
        chunk = media_pb2.AudioChunk(data=pcm[:1000])
        return lipsync.PrepareAudio(iter([lipsync_pb2.PrepareAudioRequest(chunk=chunk)]))

    assert _status(chunks_first) == invalid


def test_bad_streams_get_a_clear_status(lipsync, speech) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    face = media_pb2.EncodedImage(data=images.encode_image(data.astronaut(), "png"))
    frame_request = lipsync_pb2.SyncLipsRequest(frame=media_pb2.Frame(index=0, image=face))
    assert _status(lambda: lipsync.SyncLips(iter([frame_request]), timeout=30)) == invalid

    features = _prepare(lipsync, "mouth_motion", speech["en"].read_bytes(), CONTAINER)

    def config(**changes) -> lipsync_pb2.SyncLipsRequest:  # type: ignore[no-untyped-def]
        fields = {"features": features, "fps": 25.0, **changes}
        return lipsync_pb2.SyncLipsRequest(config=lipsync_pb2.LipSyncConfig(**fields))

    def stream(*requests: lipsync_pb2.SyncLipsRequest):  # type: ignore[no-untyped-def]
        return lambda: lipsync.SyncLips(iter(requests), timeout=30)

    assert _status(stream(config(fps=0.0), frame_request)) == invalid
    foreign = lipsync_pb2.AudioFeatures(engine="wav2lip", state=features.state)
    assert _status(stream(config(features=foreign), frame_request)) == invalid
    corrupt = lipsync_pb2.AudioFeatures(engine="mouth_motion", state=b"garbage")
    assert _status(stream(config(features=corrupt), frame_request)) == invalid
    assert _status(stream(config(), config())) == invalid
    not_an_image = lipsync_pb2.SyncLipsRequest(
        frame=media_pb2.Frame(index=0, image=media_pb2.EncodedImage(data=b"nope"))
    )
    assert _status(stream(config(), not_an_image)) == invalid


def test_a_stream_that_never_sends_its_config_is_ended(lipsync) -> None:
    release = threading.Event()

    def silent() -> Iterator[lipsync_pb2.SyncLipsRequest]:
        release.wait(30)
        return
        yield  # a generator that sends nothing until released

    started = time.monotonic()
    try:
        code = _status(lambda: lipsync.SyncLips(silent(), timeout=30))
        prepare_code = _status(lambda: lipsync.PrepareAudio(silent(), timeout=30))
    finally:
        release.set()
    assert code == prepare_code == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 4 * IDLE_TIMEOUT + 2


def test_pcm_at_another_rate_is_resampled(lipsync, speech) -> None:
    samples, rate = soundfile.read(speech["en"], dtype="float64")
    stereo_48k = signal.resample_poly(samples, 48000, rate)
    pcm = to_pcm_s16le(np.repeat(stereo_48k[:, None], 2, axis=1))
    audio_format = media_pb2.AudioFormat(
        encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=48000, channels=2
    )
    features = _prepare(lipsync, "mouth_motion", pcm, audio_format)
    assert features.duration_seconds == pytest.approx(len(samples) / rate, abs=0.01)


def _openings(features: lipsync_pb2.AudioFeatures) -> np.ndarray:
    with np.load(io.BytesIO(features.state), allow_pickle=False) as state:
        return state["opening"]


def test_the_voice_services_stems_drive_the_mouth_as_they_are(lipsync, speech) -> None:
    """PCM s16le at 44.1 kHz stereo, as every voice StemChunk declares itself, gives the same
    mouth motion as the same voice sent at its own rate in mono."""
    samples, rate = soundfile.read(speech["ko"], dtype="float64")
    stem = signal.resample_poly(samples, 44100, rate)
    stem_format = media_pb2.AudioFormat(
        encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=44100, channels=2
    )
    from_stem = _prepare(lipsync, "mouth_motion", to_pcm_s16le(np.stack([stem, stem], 1)),
                         stem_format, chunk_bytes=128 * 1024)  # fmt: skip
    from_voice = _prepare(lipsync, "mouth_motion", *_pcm(speech["ko"]))
    assert from_stem.duration_seconds == pytest.approx(from_voice.duration_seconds, abs=0.01)
    stem_openings, voice_openings = _openings(from_stem), _openings(from_voice)
    count = min(len(stem_openings), len(voice_openings))
    assert abs(len(stem_openings) - len(voice_openings)) <= 1 and count > 50
    assert voice_openings.std() > 0  # a moving mouth to compare
    assert np.corrcoef(stem_openings[:count], voice_openings[:count])[0, 1] > 0.99
