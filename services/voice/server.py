"""Runs the voice service: `python -m services.voice.server`."""

import torch
from remind.v1 import voice_pb2, voice_pb2_grpc

from services.shared.observability import configure_logging
from services.shared.server import RunningServer, serve_until_signalled, start_model_server
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.voice.config import VoiceSettings
from services.voice.engines.registry import engine_factories
from services.voice.servicer import VoiceServicer


def start(settings: VoiceSettings, store: ObjectStore | None = None) -> RunningServer:
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    return start_model_server(
        settings,
        engine_factories(settings),
        lambda engines: VoiceServicer(engines, settings, store or ObjectStore(S3Settings.load())),
        voice_pb2_grpc.add_VoiceServiceServicer_to_server,
        voice_pb2.DESCRIPTOR.services_by_name["VoiceService"],
    )


def main() -> None:
    configure_logging("voice")
    serve_until_signalled(start(VoiceSettings.load()))


if __name__ == "__main__":
    main()
