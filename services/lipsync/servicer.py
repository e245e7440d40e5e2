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
from services.shared.errors import TooLarge
from services.shared.observability import FRAMES
from services.shared.streams import read_ahead, with_idle_timeout

log = logging.getLogger(__name__)


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
        requests = with_idle_timeout(
            request_iterator, self.settings.request_idle_timeout_seconds, "PrepareAudio"
        )
        config = wire.first_message(
            requests,
            "config",
            "The first PrepareAudio message must be the config; the audio chunks follow it.",
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
        requests = with_idle_timeout(
            request_iterator, self.settings.request_idle_timeout_seconds, "SyncLips"
        )
        config = wire.first_message(
            requests,
            "config",
            "The first SyncLips message must be the config; the frames follow it.",
        )
        wire.require(
            0 < config.fps <= self.settings.max_fps,
            f"fps must be above 0 and at most {self.settings.max_fps:g}, got {config.fps:g}.",
        )
        features = features_from_proto(config.features)
        engine = self.engines.resolve(features.engine)
        syncer = engine.start_stream(features, config.fps)
        frames_done = FRAMES.labels("lipsync", engine.name)

        def submit_frames(stream: Iterator[lipsync_pb2.SyncLipsRequest]):
            yield from wire.submitted_frames(
                stream, syncer.submit, self.settings.max_frame_pixels, "SyncLips"
            )
            syncer.finish()

        frames, with_face = 0, 0
        for index, pending in read_ahead(submit_frames(requests), self.settings.frames_in_flight):
            synced = pending.result()
            frames_done.inc()
            frames += 1
            with_face += synced.face_found
            yield lipsync_pb2.SyncLipsResponse(
                index=index,
                image=wire.encode(synced.image, config.output_format),
                face_found=synced.face_found,
                mouth_box=wire.box_to_proto(synced.mouth_box),
                engine=engine.name,
            )
        log.info("synced %d frames with %s, %d with a face", frames, engine.name, with_face)

    def ListLipSyncEngines(
        self, request: lipsync_pb2.ListLipSyncEnginesRequest, context: grpc.ServicerContext
    ) -> lipsync_pb2.ListLipSyncEnginesResponse:
        return lipsync_pb2.ListLipSyncEnginesResponse(
            engines=wire.engine_infos(self.engines.statuses()),
            default_engine=self.engines.default_name(),
        )
