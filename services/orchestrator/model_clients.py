"""The orchestrator's side of the model services: domain calls over gRPC.

Every client dials its service the same way (`model_channel`) and turns its statuses back into
domain errors. Frame streams send a config first and then frames, and stream back one response
per frame; closing the returned generator cancels the call. Recordings travel by reference
(a storage object the voice service reads itself, with a grant for it signed here); stems and
features come back as streams.

A service that goes away is retried as retries.py says: every call here is retried whole
(voice extraction starts over, its progress restarting the window); frame streams are retried
by the frame pipeline, which knows the first frame not yet delivered.
"""

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

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
from services.orchestrator.retries import RetryPolicy, RetryWindow, retrying
from services.shared import errors
from services.shared.grpc_status import error_from_rpc
from services.shared.server import message_options
from services.shared.storage_grants import READ, GrantSigner
from services.shared.tracing import trace_metadata

PREPARE_TIMEOUT_SECONDS = 20.0


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


# The calls a Create makes before it answers (engine checks, the photo, the recording's header)
# hold a request thread: they wait this little for a service that is away, then the caller
# gets UNAVAILABLE and tries again, instead of every thread waiting out a restart.
ADMISSION_RETRY = RetryPolicy(window_seconds=10.0)


class ModelClient:
    """One model service: its channel, stub and call deadline, and status translation."""

    what: ClassVar[str]  # "The faceswap service", for error messages
    stub_type: ClassVar[type[Any]]  # the generated stub class
    # The service's List*Engines RPC and its request type.
    list_engines_rpc: ClassVar[str]
    list_engines_request: ClassVar[type[Any]]

    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        timeout_seconds: float,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.channel = model_channel(address, max_message_bytes)
        self.stub = self.stub_type(self.channel)
        self.timeout = timeout_seconds
        self.retry = retry or RetryPolicy()

    def close(self) -> None:
        self.channel.close()

    def _unary(
        self,
        rpc: str,
        request: Callable[[], Any],
        timeout: float = 0.0,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """A unary or client-streaming call of `request()`, made anew for each attempt."""
        call = getattr(self.stub, rpc)

        def attempt(_window: RetryWindow) -> Any:
            try:
                return call(
                    request(), timeout=timeout or PREPARE_TIMEOUT_SECONDS, metadata=trace_metadata()
                )
            except grpc.RpcError as error:
                raise error_from_rpc(error, self.what) from None

        return retrying(retry or self.retry, attempt, f"{rpc} failed")

    def _stream(self, call: Callable[..., Any], requests: Iterator[Any]) -> Iterator[Any]:
        responses = call(requests, timeout=self.timeout, metadata=trace_metadata())
        try:
            yield from responses
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.what) from None
        finally:
            if responses.is_active():
                responses.cancel()

    def check_engine(self, name: str) -> None:
        """Refuses an engine the service does not have or cannot run, before work is queued."""
        if name.strip().lower() in ("", "auto"):
            return
        listed = self._unary(
            self.list_engines_rpc, self.list_engines_request, retry=ADMISSION_RETRY
        )
        by_name = {engine.name: engine for engine in listed.engines}
        if name not in by_name:
            raise errors.InvalidInput(
                f"Unknown engine {errors.shown(name)} for {self.what.lower()}; its engines: "
                f"{', '.join(by_name)}, auto."
            )
        if not by_name[name].ready:
            raise errors.FailedPrecondition(
                f"{self.what} cannot run engine {errors.shown(name)} now: {by_name[name].detail}"
            )


class FaceSwapClient(ModelClient):
    what = "The faceswap service"
    stub_type = faceswap_pb2_grpc.FaceSwapServiceStub
    list_engines_rpc = "ListFaceSwapEngines"
    list_engines_request = faceswap_pb2.ListFaceSwapEnginesRequest

    def prepare_identity(
        self, photo: bytes, engine: str, face_choice: media_pb2.FaceChoice | None = None
    ) -> faceswap_pb2.FaceIdentity:
        request = faceswap_pb2.PrepareIdentityRequest(
            photo=media_pb2.EncodedImage(data=photo), engine=engine, face_choice=face_choice
        )
        return self._unary("PrepareIdentity", lambda: request, retry=ADMISSION_RETRY).identity

    def find_faces(self, photo: bytes, engine: str) -> list[media_pb2.DetectedFace]:
        """The faces the engine finds in a photo, left to right, as FaceChoice.index counts."""
        request = faceswap_pb2.FindFacesRequest(
            photo=media_pb2.EncodedImage(data=photo), engine=engine
        )
        return list(self._unary("FindFaces", lambda: request, retry=ADMISSION_RETRY).faces)

    def swap_faces(
        self, identity: faceswap_pb2.FaceIdentity, frames: Iterator[media_pb2.Frame]
    ) -> Iterator[faceswap_pb2.SwapFacesResponse]:
        def requests() -> Iterator[faceswap_pb2.SwapFacesRequest]:
            yield faceswap_pb2.SwapFacesRequest(
                config=faceswap_pb2.SwapConfig(identity=identity, output_format=FRAME_FORMAT)
            )
            for frame in frames:
                yield faceswap_pb2.SwapFacesRequest(frame=frame)

        return self._stream(self.stub.SwapFaces, requests())


class LipSyncClient(ModelClient):
    what = "The lipsync service"
    stub_type = lipsync_pb2_grpc.LipSyncServiceStub
    list_engines_rpc = "ListLipSyncEngines"
    list_engines_request = lipsync_pb2.ListLipSyncEnginesRequest

    def prepare_audio(
        self,
        chunks: Callable[[], Iterator[bytes]],
        audio_format: media_pb2.AudioFormat,
        engine: str,
    ) -> lipsync_pb2.AudioFeatures:
        """The engine's features of a voice sent as `chunks()` in `audio_format`."""

        def requests() -> Iterator[lipsync_pb2.PrepareAudioRequest]:
            yield lipsync_pb2.PrepareAudioRequest(
                config=lipsync_pb2.PrepareAudioConfig(engine=engine, format=audio_format)
            )
            for chunk in chunks():
                yield lipsync_pb2.PrepareAudioRequest(chunk=media_pb2.AudioChunk(data=chunk))

        return self._unary("PrepareAudio", requests, self.timeout).features

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

        return self._stream(self.stub.SyncLips, requests())


class VoiceClient(ModelClient):
    what = "The voice service"
    stub_type = voice_pb2_grpc.VoiceServiceStub
    list_engines_rpc = "ListVoiceEngines"
    list_engines_request = voice_pb2.ListVoiceEnginesRequest

    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        timeout_seconds: float,
        retry: RetryPolicy,
        grants: GrantSigner,
    ) -> None:
        super().__init__(address, max_message_bytes, timeout_seconds, retry)
        self.grants = grants

    def probe_audio(self, recording: media_pb2.StorageObject) -> voice_pb2.ProbeAudioResponse:
        """Checks that a stored recording is audio the service can use, from its header."""
        request = voice_pb2.ProbeAudioRequest(
            object=recording, object_grant=self.grants.grant(recording, READ)
        )
        return self._unary("ProbeAudio", lambda: request, retry=ADMISSION_RETRY)

    def extract_voice(
        self,
        recording: media_pb2.StorageObject,
        engine: str,
        max_seconds: float,
        vocals: "VocalsSink",
        on_progress: Callable[[float], None],
    ) -> voice_pb2.SeparationSummary:
        """Streams the vocals stem of the first `max_seconds` of a stored recording into
        `vocals` as it is separated; returns the summary. A separation the service drops is
        started over, and `vocals` with it."""
        config = voice_pb2.SeparationConfig(
            engine=engine,
            source=recording,
            source_grant=self.grants.grant(recording, READ),
            stems=[voice_pb2.STEM_VOCALS],
            max_seconds=max_seconds,
        )

        # Messages the furthest attempt received: only going further is progress, so a
        # recording that breaks the service at the same point every time fails in the end.
        furthest = 0

        def attempt(window: RetryWindow) -> voice_pb2.SeparationSummary:
            nonlocal furthest
            vocals.start_over()
            summary = voice_pb2.SeparationSummary()
            requests = iter([voice_pb2.SeparateVoiceRequest(config=config)])
            for received, response in enumerate(self._stream(self.stub.SeparateVoice, requests), 1):
                if received > furthest:
                    furthest = received
                    window.progressed()
                kind = response.WhichOneof("payload")
                if kind == "chunk" and response.chunk.stem == voice_pb2.STEM_VOCALS:
                    vocals.add(response.chunk.data, response.chunk.format)
                elif kind == "progress" and response.progress.seconds_total:
                    on_progress(response.progress.seconds_done / response.progress.seconds_total)
                elif kind == "summary":
                    summary = response.summary
            return summary

        return retrying(self.retry, attempt, "voice extraction broke")


class VocalsSink(Protocol):
    """Where extracted vocals go as they stream in."""

    def start_over(self) -> None:
        """Forgets what was added: the separation starts again from the beginning."""

    def add(self, pcm: bytes, audio_format: media_pb2.AudioFormat) -> None: ...
