"""FaceSwapService: protobuf in, engine calls, protobuf out. No model code here."""

import logging
from collections.abc import Iterator

import grpc
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceIdentity, FaceSwapEngine
from services.shared import media, wire
from services.shared.engine_catalog import EngineCatalog
from services.shared.observability import FRAMES
from services.shared.streams import read_ahead

log = logging.getLogger(__name__)


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
        photo = media.decode_image(request.photo.data, self.settings.max_photo_pixels)
        identity = engine.prepare_identity(photo)
        return faceswap_pb2.PrepareIdentityResponse(identity=identity_to_proto(identity))

    def SwapFaces(
        self,
        request_iterator: Iterator[faceswap_pb2.SwapFacesRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[faceswap_pb2.SwapFacesResponse]:
        config = wire.first_message(
            request_iterator, "config", "The first SwapFaces message must be the config."
        )
        identity = identity_from_proto(config.identity)
        engine = self.engines.resolve(identity.engine)
        swapper = engine.start_stream(identity)
        frames_done = FRAMES.labels("faceswap", engine.name)

        frames, with_face = 0, 0
        frames_submitted = wire.submitted_frames(
            request_iterator, swapper.submit, self.settings.max_frame_pixels, "SwapFaces"
        )
        for index, pending in read_ahead(frames_submitted, self.settings.frames_in_flight):
            swapped = pending.result()
            frames_done.inc()
            frames += 1
            with_face += swapped.face_found
            yield faceswap_pb2.SwapFacesResponse(
                index=index,
                image=wire.encode(swapped.image, config.output_format),
                face_found=swapped.face_found,
                face_box=wire.box_to_proto(swapped.face_box),
                engine=engine.name,
            )
        log.info("swapped %d frames with %s, %d with a face", frames, engine.name, with_face)

    def ListFaceSwapEngines(
        self, request: faceswap_pb2.ListFaceSwapEnginesRequest, context: grpc.ServicerContext
    ) -> faceswap_pb2.ListFaceSwapEnginesResponse:
        return faceswap_pb2.ListFaceSwapEnginesResponse(
            engines=wire.engine_infos(self.engines.statuses()),
            default_engine=self.engines.default_name(),
        )
