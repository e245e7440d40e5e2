"""Runs the faceswap service: `python -m services.faceswap.server`."""

from remind.v1 import faceswap_pb2, faceswap_pb2_grpc

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.registry import engine_factories
from services.faceswap.servicer import FaceSwapServicer
from services.shared.observability import configure_logging
from services.shared.server import RunningServer, serve_until_signalled, start_model_server


def start(settings: FaceSwapSettings) -> RunningServer:
    return start_model_server(
        settings,
        engine_factories(settings),
        lambda engines: FaceSwapServicer(engines, settings),
        faceswap_pb2_grpc.add_FaceSwapServiceServicer_to_server,
        faceswap_pb2.DESCRIPTOR.services_by_name["FaceSwapService"],
    )


def main() -> None:
    configure_logging("faceswap")
    serve_until_signalled(start(FaceSwapSettings.load()))


if __name__ == "__main__":
    main()
