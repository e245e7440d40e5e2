"""The orchestrator's side of the model services: domain calls over gRPC.

Every client dials its service the same way (`model_channel`) and turns its statuses back into
domain errors. Frame streams send a config first and then frames, and stream back one response
per frame; closing the returned generator cancels the call.
"""

import io
import wave
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from remind.v1 import (
    faceswap_pb2,
    faceswap_pb2_grpc,
    lipsync_pb2,
    lipsync_pb2_grpc,
    media_pb2,
    voice_pb2,
    voice_pb2_grpc,
)

from services.orchestrator.frame_pipeline import FRAME_FORMAT
from services.shared import errors
from services.shared.grpc_status import error_from_rpc
from services.shared.server import message_options
from services.shared.tracing import trace_metadata

PREPARE_TIMEOUT_SECONDS = 20.0
AUDIO_CHUNK_BYTES = 512 * 1024


def model_channel(address: str, max_message_bytes: int) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
        options=[
            *message_options(max_message_bytes),
            # With a `dns:///` address of a headless Service every replica gets streams:
            # HTTP/2 connections are long-lived, so balancing happens per call on the client.
            ("grpc.lb_policy_name", "round_robin"),
            # A restarted service is found again within a second or two.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )


def _unary(call: Callable[..., Any], request: Any, what: str) -> Any:
    try:
        # Waits for a (re)starting service to connect rather than failing at once.
        return call(
            request, timeout=PREPARE_TIMEOUT_SECONDS, wait_for_ready=True, metadata=trace_metadata()
        )
    except grpc.RpcError as error:
        raise error_from_rpc(error, what) from None


def _stream(
    call: Callable[..., Any], requests: Iterator[Any], timeout: float, what: str
) -> Iterator[Any]:
    responses = call(requests, timeout=timeout, metadata=trace_metadata())
    try:
        yield from responses
    except grpc.RpcError as error:
        raise error_from_rpc(error, what) from None
    finally:
        if responses.is_active():
            responses.cancel()


def _check_engine(engines: list[media_pb2.EngineInfo], name: str, what: str) -> None:
    """Refuses an engine the service does not have or cannot run, before any work is queued."""
    if name.strip().lower() in ("", "auto"):
        return
    by_name = {engine.name: engine for engine in engines}
    if name not in by_name:
        raise errors.InvalidInput(
            f"Unknown engine {name!r} for {what.lower()}; its engines: {', '.join(by_name)}, auto."
        )
    if not by_name[name].ready:
        raise errors.FailedPrecondition(
            f"{what} cannot run engine {name!r} now: {by_name[name].detail}"
        )


def _audio_chunks(data: bytes) -> Iterator[media_pb2.AudioChunk]:
    for start in range(0, len(data), AUDIO_CHUNK_BYTES):
        yield media_pb2.AudioChunk(data=data[start : start + AUDIO_CHUNK_BYTES])


class FaceSwapClient:
    what = "The faceswap service"

    def __init__(self, address: str, max_message_bytes: int, timeout_seconds: float) -> None:
        self.channel = model_channel(address, max_message_bytes)
        self.stub = faceswap_pb2_grpc.FaceSwapServiceStub(self.channel)
        self.timeout = timeout_seconds

    def prepare_identity(self, photo: bytes, engine: str) -> faceswap_pb2.FaceIdentity:
        request = faceswap_pb2.PrepareIdentityRequest(
            photo=media_pb2.EncodedImage(data=photo), engine=engine
        )
        return _unary(self.stub.PrepareIdentity, request, self.what).identity

    def swap_faces(
        self, identity: faceswap_pb2.FaceIdentity, frames: Iterator[media_pb2.Frame]
    ) -> Iterator[faceswap_pb2.SwapFacesResponse]:
        def requests() -> Iterator[faceswap_pb2.SwapFacesRequest]:
            yield faceswap_pb2.SwapFacesRequest(
                config=faceswap_pb2.SwapConfig(identity=identity, output_format=FRAME_FORMAT)
            )
            for frame in frames:
                yield faceswap_pb2.SwapFacesRequest(frame=frame)

        return _stream(self.stub.SwapFaces, requests(), self.timeout, self.what)

    def close(self) -> None:
        self.channel.close()


class LipSyncClient:
    what = "The lipsync service"

    def __init__(self, address: str, max_message_bytes: int, timeout_seconds: float) -> None:
        self.channel = model_channel(address, max_message_bytes)
        self.stub = lipsync_pb2_grpc.LipSyncServiceStub(self.channel)
        self.timeout = timeout_seconds

    def check_engine(self, name: str) -> None:
        request = lipsync_pb2.ListLipSyncEnginesRequest()
        _check_engine(
            _unary(self.stub.ListLipSyncEngines, request, self.what).engines, name, self.what
        )

    def prepare_audio(self, recording: bytes, engine: str) -> lipsync_pb2.AudioFeatures:
        """The engine's features of a voice recording (any container ffmpeg decodes)."""

        def requests() -> Iterator[lipsync_pb2.PrepareAudioRequest]:
            yield lipsync_pb2.PrepareAudioRequest(
                config=lipsync_pb2.PrepareAudioConfig(
                    engine=engine,
                    format=media_pb2.AudioFormat(encoding=media_pb2.AUDIO_ENCODING_CONTAINER),
                )
            )
            for chunk in _audio_chunks(recording):
                yield lipsync_pb2.PrepareAudioRequest(chunk=chunk)

        try:
            return self.stub.PrepareAudio(
                requests(), timeout=self.timeout, wait_for_ready=True, metadata=trace_metadata()
            ).features
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.what) from None

    def sync_lips(
        self, features: lipsync_pb2.AudioFeatures, fps: float, frames: Iterator[media_pb2.Frame]
    ) -> Iterator[lipsync_pb2.SyncLipsResponse]:
        def requests() -> Iterator[lipsync_pb2.SyncLipsRequest]:
            yield lipsync_pb2.SyncLipsRequest(
                config=lipsync_pb2.LipSyncConfig(
                    features=features, fps=fps, output_format=FRAME_FORMAT
                )
            )
            for frame in frames:
                yield lipsync_pb2.SyncLipsRequest(frame=frame)

        return _stream(self.stub.SyncLips, requests(), self.timeout, self.what)

    def close(self) -> None:
        self.channel.close()


class VoiceClient:
    what = "The voice service"

    def __init__(self, address: str, max_message_bytes: int, timeout_seconds: float) -> None:
        self.channel = model_channel(address, max_message_bytes)
        self.stub = voice_pb2_grpc.VoiceServiceStub(self.channel)
        self.timeout = timeout_seconds

    def check_engine(self, name: str) -> None:
        request = voice_pb2.ListVoiceEnginesRequest()
        _check_engine(
            _unary(self.stub.ListVoiceEngines, request, self.what).engines, name, self.what
        )

    def probe_audio(self, bucket: str, key: str) -> voice_pb2.ProbeAudioResponse:
        """Checks that a stored recording is audio the service can use, from its header."""
        request = voice_pb2.ProbeAudioRequest(
            object=media_pb2.StorageObject(bucket=bucket, key=key)
        )
        return _unary(self.stub.ProbeAudio, request, self.what)

    def extract_voice(
        self, recording: bytes, engine: str, on_progress: Callable[[float], None]
    ) -> tuple[bytes, voice_pb2.SeparationSummary]:
        """The vocals stem of a recording as PCM s16le, 44.1 kHz stereo, and the summary."""

        def requests() -> Iterator[voice_pb2.SeparateVoiceRequest]:
            yield voice_pb2.SeparateVoiceRequest(
                config=voice_pb2.SeparationConfig(
                    engine=engine,
                    format=media_pb2.AudioFormat(encoding=media_pb2.AUDIO_ENCODING_CONTAINER),
                    stems=[voice_pb2.STEM_VOCALS],
                )
            )
            for chunk in _audio_chunks(recording):
                yield voice_pb2.SeparateVoiceRequest(chunk=chunk)

        vocals = bytearray()
        summary = voice_pb2.SeparationSummary()
        for response in _stream(self.stub.SeparateVoice, requests(), self.timeout, self.what):
            kind = response.WhichOneof("payload")
            if kind == "chunk" and response.chunk.stem == voice_pb2.STEM_VOCALS:
                vocals.extend(response.chunk.data)
            elif kind == "progress" and response.progress.seconds_total:
                on_progress(response.progress.seconds_done / response.progress.seconds_total)
            elif kind == "summary":
                summary = response.summary
        return bytes(vocals), summary

    def close(self) -> None:
        self.channel.close()


def pcm_to_wav(pcm: bytes, rate: int = 44100, channels: int = 2) -> bytes:
    """A WAV container around PCM s16le, for ffmpeg and the lipsync service to read."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buffer.getvalue()
