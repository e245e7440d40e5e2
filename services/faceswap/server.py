"""Runs the faceswap service: `python -m services.faceswap.server`."""

from remind.v1 import faceswap_pb2, faceswap_pb2_grpc

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.registry import engine_factories
from services.faceswap.servicer import FaceSwapServicer
from services.shared.server import GrpcService, model_server, serve

SERVICE = GrpcService.of(faceswap_pb2_grpc, faceswap_pb2, "FaceSwapService")
start = model_server(SERVICE, engine_factories, FaceSwapServicer)

if __name__ == "__main__":
    serve("faceswap", lambda: start(FaceSwapSettings.load()))
