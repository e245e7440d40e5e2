"""Runs the voice service: `python -m services.voice.server`."""

from remind.v1 import voice_pb2, voice_pb2_grpc

from services.shared.server import GrpcService, RunningServer, serve, start_model_server
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.voice.config import VoiceSettings
from services.voice.engines.registry import engine_factories
from services.voice.servicer import VoiceServicer

SERVICE = GrpcService.of(voice_pb2_grpc, voice_pb2, "VoiceService")


def start(settings: VoiceSettings, store: ObjectStore | None = None) -> RunningServer:
    """The voice server; `store` (for stored sources and stems) defaults to REMIND_S3_*."""
    return start_model_server(
        settings,
        engine_factories(settings),
        lambda engines: VoiceServicer(engines, settings, store or ObjectStore(S3Settings.load())),
        SERVICE,
    )


if __name__ == "__main__":
    serve("voice", lambda: start(VoiceSettings.load()))
