"""Runs the lipsync service: `python -m services.lipsync.server`."""

import grpc
from remind.v1 import lipsync_pb2, lipsync_pb2_grpc

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.registry import engine_factories
from services.lipsync.servicer import LipSyncServicer
from services.shared.engine_catalog import EngineCatalog
from services.shared.observability import configure_logging, watch_gpu_memory
from services.shared.server import RunningServer, serve_until_signalled, start_server


def start(settings: LipSyncSettings) -> RunningServer:
    factories = engine_factories(settings)
    engines = EngineCatalog(factories, tuple(factories), settings.enabled_engines())
    engines.load_all()

    def add_servicers(server: grpc.Server) -> list[str]:
        lipsync_pb2_grpc.add_LipSyncServiceServicer_to_server(
            LipSyncServicer(engines, settings), server
        )
        return [lipsync_pb2.DESCRIPTOR.services_by_name["LipSyncService"].full_name]

    running = start_server(settings, add_servicers)
    running.on_stop.append(engines.close)
    watch_gpu_memory()
    return running


def main() -> None:
    configure_logging("lipsync")
    serve_until_signalled(start(LipSyncSettings.load()))


if __name__ == "__main__":
    main()
