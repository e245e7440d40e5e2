"""Runs the voice service: `python -m services.voice.server`."""

import grpc
import torch
from remind.v1 import voice_pb2, voice_pb2_grpc

from services.shared.engine_catalog import EngineCatalog
from services.shared.observability import configure_logging
from services.shared.server import RunningServer, serve_until_signalled, start_server
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.voice.config import VoiceSettings
from services.voice.engines.registry import engine_factories
from services.voice.servicer import VoiceServicer


def start(settings: VoiceSettings, store: ObjectStore | None = None) -> RunningServer:
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    factories = engine_factories(settings)
    engines = EngineCatalog(factories, tuple(factories), settings.enabled_engines())
    engines.load_all()
    servicer = VoiceServicer(engines, settings, store or ObjectStore(S3Settings.load()))

    def add_servicers(server: grpc.Server) -> list[str]:
        voice_pb2_grpc.add_VoiceServiceServicer_to_server(servicer, server)
        return [voice_pb2.DESCRIPTOR.services_by_name["VoiceService"].full_name]

    running = start_server(settings, add_servicers)
    running.on_stop.append(engines.close)
    return running


def main() -> None:
    configure_logging("voice")
    serve_until_signalled(start(VoiceSettings.load()))


if __name__ == "__main__":
    main()
