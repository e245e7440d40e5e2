"""Runs the lipsync service: `python -m services.lipsync.server`."""

from remind.v1 import lipsync_pb2, lipsync_pb2_grpc

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.registry import engine_factories
from services.lipsync.servicer import LipSyncServicer
from services.shared.observability import configure_logging
from services.shared.server import RunningServer, serve_until_signalled, start_model_server


def start(settings: LipSyncSettings) -> RunningServer:
    return start_model_server(
        settings,
        engine_factories(settings),
        lambda engines: LipSyncServicer(engines, settings),
        lipsync_pb2_grpc.add_LipSyncServiceServicer_to_server,
        lipsync_pb2.DESCRIPTOR.services_by_name["LipSyncService"],
    )


def main() -> None:
    configure_logging("lipsync")
    serve_until_signalled(start(LipSyncSettings.load()))


if __name__ == "__main__":
    main()
