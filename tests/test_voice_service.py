"""The voice service over gRPC on the real stack: quality on known mixes, inputs, bad input."""

import struct
import subprocess
import threading
import time
from pathlib import Path

import fast_bss_eval
import grpc
import numpy as np
import pytest
import soundfile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from remind.v1 import media_pb2, voice_pb2

from services.samples import make_mix, wav_bytes
from services.shared.audio import to_pcm_s16le
from services.shared.storage_grants import READ, WRITE, GrantSigner
from services.voice.config import VoiceSettings
from services.voice.server import start
from tests.support.voice_client import VoiceClient

# Spleeter must lift the voice's SDR by this much over the mixture itself, and beat the
# embedded engine by this much, on every mix (measured: +10.6 to +13.3 dB, and 7.9 to 10.7 dB).
SPLEETER_MIN_IMPROVEMENT_DB = 8.0
SPLEETER_MIN_LEAD_DB = 4.0
MIX_SECONDS = 12.0
BUCKET = "remind-voice-tests"


@pytest.fixture(scope="module")
def voice(stack_info):
    with VoiceClient(stack_info.voice_address) as client:
        yield client


def _sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    length = min(len(reference), len(estimate))
    mono_ref = reference[:length].mean(axis=1)[None]
    mono_est = estimate[:length].mean(axis=1)[None]
    return float(fast_bss_eval.sdr(mono_ref, mono_est)[0])


def _ffmpeg(tmp_path: Path, name: str, *arguments: str) -> bytes:
    out = tmp_path / name
    subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments, str(out)], check=True)
    return out.read_bytes()


def _status(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("speaker", ["en-us", "en-gb+f3", "ko"])
def test_spleeter_improves_the_voice_and_beats_the_embedded_engine(voice, speaker):
    mix = make_mix(speaker, MIX_SECONDS, voice_to_music_db=0.0, seed=len(speaker))
    recording = wav_bytes(mix.mixture)
    mixture_sdr = _sdr(mix.voice, mix.mixture)
    scores = {}
    for engine in ("spleeter", "spectral"):
        result = voice.separate(recording, engine=engine)
        assert result.summary.engine == engine
        assert result.summary.voice_found
        vocals = result.stems["vocals"]
        assert abs(len(vocals) - len(mix.mixture)) == 0
        scores[engine] = _sdr(mix.voice, vocals)
    print(f"{speaker}: mixture {mixture_sdr:.2f} dB, spleeter {scores['spleeter']:.2f} dB, "
          f"spectral {scores['spectral']:.2f} dB")  # fmt: skip
    assert scores["spleeter"] - mixture_sdr >= SPLEETER_MIN_IMPROVEMENT_DB
    assert scores["spectral"] > mixture_sdr  # the fallback helps too
    assert scores["spleeter"] - scores["spectral"] >= SPLEETER_MIN_LEAD_DB


def test_engines_are_listed_with_spleeter_as_default(voice):
    listed = voice.engines()
    assert listed.default_engine == "spleeter"
    assert {e.name: e.ready for e in listed.engines} == {"spleeter": True, "spectral": True}


@pytest.mark.parametrize(
    ("name", "codec"),
    [("voice.mp3", ["-ar", "22050", "-c:a", "libmp3lame"]),
     ("voice.m4a", ["-ar", "22050", "-c:a", "aac"]),
     ("voice.ogg", ["-ar", "22050", "-c:a", "libvorbis"]),
     ("voice.webm", ["-ar", "48000", "-c:a", "libopus"])],
)  # fmt: skip
def test_common_recording_formats_are_separated(voice, tmp_path, name, codec):
    mix = make_mix("en-us", 3.0)
    source = tmp_path / "mono22k.wav"
    source.write_bytes(wav_bytes(mix.mixture[:, :1], 44100))
    data = _ffmpeg(tmp_path, name, "-i", str(source), *codec)
    probe = voice.probe(data)
    assert probe.channels == 1 and abs(probe.duration_seconds - 3.0) < 0.2
    result = voice.separate(data, stems=(voice_pb2.STEM_VOCALS, voice_pb2.STEM_ACCOMPANIMENT))
    assert abs(result.summary.duration_seconds - 3.0) < 0.2
    assert set(result.stems) == {"vocals", "accompaniment"}
    assert result.stems["vocals"].shape[1] == 2
    assert result.progress and result.progress[-1].seconds_done == pytest.approx(
        result.summary.duration_seconds
    )


def test_video_with_sound_and_raw_pcm_are_accepted(voice, tmp_path):
    mix = make_mix("en-us", 3.0)
    (tmp_path / "voice.wav").write_bytes(wav_bytes(mix.mixture))
    video = _ffmpeg(tmp_path, "clip.mp4", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10",
                    "-i", str(tmp_path / "voice.wav"), "-t", "3", "-c:v", "libx264",
                    "-c:a", "aac")  # fmt: skip
    assert voice.separate(video).summary.voice_found
    pcm = to_pcm_s16le(mix.mixture[::3, :1])  # 14.7 kHz mono
    result = voice.separate(
        pcm,
        audio_format=media_pb2.AudioFormat(
            encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=14700, channels=1
        ),
    )
    assert abs(result.summary.duration_seconds - 3.0) < 0.05


def test_stored_stems_hold_the_streamed_samples_and_are_never_overwritten(
    voice, store, stack_info, tmp_path
):
    store.ensure_buckets(BUCKET)
    key = f"inputs/{time.time_ns()}.wav"
    data = wav_bytes(make_mix("ko", 3.0).mixture)
    store.put_new(BUCKET, key, __import__("io").BytesIO(data), len(data))
    prefix = media_pb2.StorageObject(bucket=BUCKET, key=f"stems/{time.time_ns()}")
    source = media_pb2.StorageObject(bucket=BUCKET, key=key)
    both = (voice_pb2.STEM_VOCALS, voice_pb2.STEM_ACCOMPANIMENT)
    grants = GrantSigner(stack_info.grant_signing_key, 60)
    granted = {
        "source": source,
        "source_grant": grants.grant(source, READ),
        "store_prefix": prefix,
        "store_prefix_grant": grants.grant(prefix, WRITE),
    }
    result = voice.separate(stems=both, wiener_filter=True, **granted)
    keys = sorted(item.key for item in result.summary.stored)
    assert keys == [f"{prefix.key}/accompaniment.wav", f"{prefix.key}/vocals.wav"]
    for stem_key in keys:
        stem = stem_key.rsplit("/", 1)[1].removesuffix(".wav")
        path = tmp_path / f"{stem}.wav"
        path.write_bytes(store.get_bytes(BUCKET, stem_key))
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")
        stored, _ = soundfile.read(path, dtype="int16")
        assert stored.astype("<i2").tobytes() == result.pcm[stem]  # the very samples streamed
    error = _status(lambda: voice.separate(**granted))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def test_every_stem_chunk_declares_its_format(voice):
    both = (voice_pb2.STEM_VOCALS, voice_pb2.STEM_ACCOMPANIMENT)
    result = voice.separate(wav_bytes(make_mix("en-us", 2.0).mixture), stems=both)
    expected = media_pb2.AudioFormat(
        encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=44100, channels=2
    )
    assert result.formats == {"vocals": expected, "accompaniment": expected}


def test_a_mono_recording_separates_exactly_as_the_same_voice_in_dual_mono(voice):
    mix = make_mix("en-gb+f3", 4.0)
    mono = mix.mixture.mean(axis=1)
    both = (voice_pb2.STEM_VOCALS, voice_pb2.STEM_ACCOMPANIMENT)
    from_mono = voice.separate(wav_bytes(mono), stems=both)
    from_stereo = voice.separate(wav_bytes(np.stack([mono, mono], axis=1)), stems=both)
    assert from_mono.pcm == from_stereo.pcm
    # No level lost on the way: below Spleeter's 11 kHz cut the stems add up to the input.
    total = from_mono.stems["vocals"] + from_mono.stems["accompaniment"]
    band = slice(100, int(len(mono) / 2 * 10_000 / 22_050))
    level = np.abs(np.fft.rfft(total[:, 0]))[band].sum() / np.abs(np.fft.rfft(mono))[band].sum()
    assert abs(20 * np.log10(level)) < 0.1


def test_max_seconds_separates_only_the_start_of_the_recording(voice):
    recording = wav_bytes(make_mix("en-us", 12.0).mixture)
    result = voice.separate(recording, max_seconds=4.0)
    assert len(result.stems["vocals"]) == 4 * 44100
    assert result.summary.duration_seconds == 4.0
    assert {round(p.seconds_total, 3) for p in result.progress} == {4.0}
    for bad in (-1.0, float("nan"), float("inf")):
        error = _status(lambda bad=bad: voice.separate(recording, max_seconds=bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_seconds" in error.details()


def test_silence_succeeds_and_says_no_voice_was_found(voice):
    result = voice.separate(wav_bytes(np.zeros((44100 * 3, 2), np.float32)))
    assert not result.summary.voice_found
    assert result.summary.voiced_seconds == 0
    assert np.abs(result.stems["vocals"]).max() == 0


def _wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack("<I", 16)
            + fmt + b"data" + struct.pack("<I", data_bytes))  # fmt: skip


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[bytes, grpc.StatusCode, str]]:
    invalid, exhausted = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    ten_seconds = _ffmpeg(tmp_path, "ten.mp3", "-f", "lavfi", "-i", "sine=f=300:d=10",
                          "-b:a", "64k")  # fmt: skip
    # Three hours of silence for the price of ten seconds: CBR frames repeated, no Xing header.
    silence = _ffmpeg(tmp_path, "quiet.mp3", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
                      "-t", "10", "-b:a", "8k", "-write_xing", "0")  # fmt: skip
    no_audio = _ffmpeg(tmp_path, "mute.mp4", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10",
                       "-t", "1", "-c:v", "libx264")  # fmt: skip
    samples = b"\x00\x01" * 44100
    return {
        "not audio": (b"these are meeting notes, not a recording", invalid, "not a readable"),
        "empty": (b"", invalid, "empty"),
        "truncated": (ten_seconds[: len(ten_seconds) // 2], invalid, "truncated"),
        "three hours": (silence * 1080, exhausted, "over the limit"),
        "1 Hz header": (_wav_header(1, 2, len(samples)) + samples, invalid, "sample rate"),
        "absurd channels": (_wav_header(44100, 4000, len(samples)) + samples, invalid, ""),
        "video without sound": (no_audio, grpc.StatusCode.FAILED_PRECONDITION, "sound track"),
    }


def test_bad_recordings_get_clear_statuses_and_the_server_stays_healthy(
    voice, stack_info, tmp_path
):
    for case, (data, code, words) in _bad_inputs(tmp_path).items():
        error = _status(lambda data=data: voice.separate(data, engine="spectral"))
        assert error.code() == code, f"{case}: {error.code()} {error.details()}"
        assert words in error.details(), f"{case}: {error.details()}"
    assert _healthy(stack_info.voice_address)
    assert voice.separate(wav_bytes(make_mix("en-us", 2.0).mixture)).summary.voice_found


def test_chunks_before_the_config_are_invalid(voice):
    def requests():
        yield voice_pb2.SeparateVoiceRequest(chunk=media_pb2.AudioChunk(data=b"RIFF"))

    error = _status(lambda: list(voice.stub.SeparateVoice(requests(), timeout=30)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in error.details()
    error = _status(lambda: list(voice.stub.SeparateVoice(iter(()), timeout=30)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_that_never_sends_its_config_is_ended(tmp_path):
    settings = VoiceSettings(
        port=0, engines="spectral", request_idle_timeout_seconds=1.0, cache_dir=str(tmp_path)
    )
    running = start(settings, store=None)
    release = threading.Event()

    def silent_client():
        release.wait(30)
        yield from ()

    try:
        with VoiceClient(f"127.0.0.1:{running.port}") as client:
            began = time.monotonic()
            error = _status(lambda: list(client.stub.SeparateVoice(silent_client(), timeout=30)))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "sent nothing" in error.details()
            assert time.monotonic() - began < 10
            assert _healthy(f"127.0.0.1:{running.port}")
    finally:
        release.set()
        running.stop()
