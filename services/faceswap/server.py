"""Runs the faceswap service: `python -m services.faceswap.server`."""

import grpc
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.registry import engine_factories
from services.faceswap.servicer import FaceSwapServicer
from services.shared.engine_catalog import EngineCatalog
from services.shared.observability import configure_logging, watch_gpu_memory
from services.shared.server import RunningServer, serve_until_signalled, start_server


def start(settings: FaceSwapSettings) -> RunningServer:
    factories = engine_factories(settings)
    engines = EngineCatalog(factories, tuple(factories), settings.enabled_engines())
    engines.load_all()

    def add_servicers(server: grpc.Server) -> list[str]:
        faceswap_pb2_grpc.add_FaceSwapServiceServicer_to_server(
            FaceSwapServicer(engines, settings), server
        )
        return [faceswap_pb2.DESCRIPTOR.services_by_name["FaceSwapService"].full_name]

    running = start_server(settings, add_servicers)
    running.on_stop.append(engines.close)
    watch_gpu_memory()
    return running


def main() -> None:
    configure_logging("faceswap")
    serve_until_signalled(start(FaceSwapSettings.load()))


if __name__ == "__main__":
    main()
