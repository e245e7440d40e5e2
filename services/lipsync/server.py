"""Runs the lipsync service: `python -m services.lipsync.server`."""

from remind.v1 import lipsync_pb2, lipsync_pb2_grpc

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.registry import engine_factories
from services.lipsync.servicer import LipSyncServicer
from services.shared.server import GrpcService, model_server, serve

SERVICE = GrpcService.of(lipsync_pb2_grpc, lipsync_pb2, "LipSyncService")
start = model_server(SERVICE, engine_factories, LipSyncServicer)

if __name__ == "__main__":
    serve("lipsync", lambda: start(LipSyncSettings.load()))
