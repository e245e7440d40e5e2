"""FaceSwapService: protobuf in, engine calls, protobuf out. No model code here."""

from collections.abc import Iterator

import grpc
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceIdentity, FaceSwapEngine
from services.shared import images, wire
from services.shared.engine_catalog import EngineCatalog
from services.shared.engines import FrameStream

SWAP_FACES = wire.FrameRpc("faceswap", "SwapFaces", faceswap_pb2.SwapFacesResponse, "face_box")


def identity_to_proto(identity: FaceIdentity) -> faceswap_pb2.FaceIdentity:
    return faceswap_pb2.FaceIdentity(
        engine=identity.engine,
        state=identity.state,
        face_box=wire.box_to_proto(identity.face_box),
        detection_score=identity.detection_score,
    )


def identity_from_proto(message: faceswap_pb2.FaceIdentity) -> FaceIdentity:
    wire.require(
        bool(message.engine and message.state),
        "The config needs the identity returned by PrepareIdentity.",
    )
    return FaceIdentity(
        engine=message.engine,
        state=message.state,
        face_box=wire.box_from_proto(message.face_box),
        detection_score=message.detection_score,
    )


class FaceSwapServicer(faceswap_pb2_grpc.FaceSwapServiceServicer):
    def __init__(self, engines: EngineCatalog[FaceSwapEngine], settings: FaceSwapSettings):
        self.engines = engines
        self.settings = settings

    def PrepareIdentity(
        self, request: faceswap_pb2.PrepareIdentityRequest, context: grpc.ServicerContext
    ) -> faceswap_pb2.PrepareIdentityResponse:
        engine = self.engines.resolve(request.engine)
        photo = images.decode_image(request.photo.data, self.settings.max_photo_pixels)
        choice = wire.face_choice_from_proto(request.face_choice)
        identity = engine.prepare_identity(photo, choice)
        return faceswap_pb2.PrepareIdentityResponse(identity=identity_to_proto(identity))

    def FindFaces(
        self, request: faceswap_pb2.FindFacesRequest, context: grpc.ServicerContext
    ) -> faceswap_pb2.FindFacesResponse:
        engine = self.engines.resolve(request.engine)
        photo = images.decode_image(request.photo.data, self.settings.max_photo_pixels)
        faces = wire.faces_to_proto(engine.find_faces(photo))
        return faceswap_pb2.FindFacesResponse(faces=faces, engine=engine.name)

    def SwapFaces(
        self,
        request_iterator: Iterator[faceswap_pb2.SwapFacesRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[faceswap_pb2.SwapFacesResponse]:
        def start(config: faceswap_pb2.SwapConfig) -> tuple[FaceSwapEngine, FrameStream]:
            identity = identity_from_proto(config.identity)
            engine = self.engines.resolve(identity.engine)
            return engine, engine.start_stream(identity)

        return wire.serve_frames(SWAP_FACES, request_iterator, self.settings, start)

    def ListFaceSwapEngines(
        self, request: faceswap_pb2.ListFaceSwapEnginesRequest, context: grpc.ServicerContext
    ) -> faceswap_pb2.ListFaceSwapEnginesResponse:
        return wire.engine_list(self.engines, faceswap_pb2.ListFaceSwapEnginesResponse)
