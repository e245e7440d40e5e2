"""LipSyncService: protobuf in, engine calls, protobuf out. No model code here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
from remind.v1 import lipsync_pb2, lipsync_pb2_grpc

from services.lipsync.audio import decode_voice
from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.base import AudioFeatures, LipSyncEngine
from services.shared import wire
from services.shared.engine_catalog import EngineCatalog
from services.shared.engines import FrameStream
from services.shared.errors import TooLarge

log = logging.getLogger(__name__)

SYNC_LIPS = wire.FrameRpc("lipsync", "SyncLips", lipsync_pb2.SyncLipsResponse, "mouth_box")


def features_to_proto(features: AudioFeatures) -> lipsync_pb2.AudioFeatures:
    return lipsync_pb2.AudioFeatures(
        engine=features.engine,
        state=features.state,
        duration_seconds=features.duration_seconds,
    )


def features_from_proto(message: lipsync_pb2.AudioFeatures) -> AudioFeatures:
    wire.require(
        bool(message.engine and message.state),
        "The config needs the audio features returned by PrepareAudio.",
    )
    return AudioFeatures(message.engine, message.state, message.duration_seconds)


class LipSyncServicer(lipsync_pb2_grpc.LipSyncServiceServicer):
    def __init__(self, engines: EngineCatalog[LipSyncEngine], settings: LipSyncSettings):
        self.engines = engines
        self.settings = settings

    def PrepareAudio(
        self,
        request_iterator: Iterator[lipsync_pb2.PrepareAudioRequest],
        context: grpc.ServicerContext,
    ) -> lipsync_pb2.PrepareAudioResponse:
        config, requests = wire.opened_stream(
            request_iterator,
            self.settings.request_idle_timeout_seconds,
            "PrepareAudio",
            "the audio chunks",
        )
        engine = self.engines.resolve(config.engine)
        data = self._receive_audio(requests)
        samples = decode_voice(data, config.format, self.settings.max_audio_seconds)
        features = engine.prepare_audio(samples)
        log.info("prepared %.1f s of voice for %s", features.duration_seconds, engine.name)
        return lipsync_pb2.PrepareAudioResponse(features=features_to_proto(features))

    def _receive_audio(self, requests: Iterator[lipsync_pb2.PrepareAudioRequest]) -> bytes:
        received = bytearray()
        for request in requests:
            wire.require(
                request.HasField("chunk"),
                "Only audio chunks may follow the config in PrepareAudio.",
            )
            received += request.chunk.data
            if len(received) > self.settings.max_audio_bytes:
                raise TooLarge(
                    f"The voice is over the limit of {self.settings.max_audio_bytes // 2**20} "
                    "MiB: trim it to the template's length."
                )
        return bytes(received)

    def SyncLips(
        self,
        request_iterator: Iterator[lipsync_pb2.SyncLipsRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[lipsync_pb2.SyncLipsResponse]:
        def start(config: lipsync_pb2.LipSyncConfig) -> tuple[LipSyncEngine, FrameStream]:
            wire.require(
                0 < config.fps <= self.settings.max_fps,
                f"fps must be above 0 and at most {self.settings.max_fps:g}, got {config.fps:g}.",
            )
            features = features_from_proto(config.features)
            engine = self.engines.resolve(features.engine)
            return engine, engine.start_stream(features, config.fps)

        return wire.serve_frames(SYNC_LIPS, request_iterator, self.settings, start)

    def ListLipSyncEngines(
        self, request: lipsync_pb2.ListLipSyncEnginesRequest, context: grpc.ServicerContext
    ) -> lipsync_pb2.ListLipSyncEnginesResponse:
        return wire.engine_list(self.engines, lipsync_pb2.ListLipSyncEnginesResponse)
