"""Conversions between protobuf media messages and plain Python values, used by every service."""

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from remind.v1 import media_pb2

from services.shared import errors, images
from services.shared.engine_catalog import EngineCatalog, EngineStatus
from services.shared.engines import Box, Engine, FrameResult, FrameStream
from services.shared.face_choice import Detection, FaceChoice, left_to_right
from services.shared.observability import FRAMES
from services.shared.settings import FrameServerSettings
from services.shared.streams import read_ahead, with_idle_timeout

log = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT")

FORMAT_NAMES: dict[int, str] = {
    media_pb2.IMAGE_FORMAT_PNG: "png",
    media_pb2.IMAGE_FORMAT_JPEG: "jpeg",
}


def box_to_proto(box: Box | None) -> media_pb2.Box | None:
    if box is None:
        return None
    x, y, width, height = box
    return media_pb2.Box(x=x, y=y, width=width, height=height)


def box_from_proto(box: media_pb2.Box) -> Box:
    return (box.x, box.y, box.width, box.height)


def face_choice_from_proto(choice: media_pb2.FaceChoice) -> FaceChoice | None:
    """The face a request names; None (unset) for the photo's main face."""
    named = choice.WhichOneof("choice")
    if named == "index":
        return int(choice.index)
    if named == "box":
        return box_from_proto(choice.box)
    return None


def faces_to_proto(faces: Sequence[Detection]) -> list[media_pb2.DetectedFace]:
    """Faces as DetectedFace messages, numbered left to right as FaceChoice.index names them."""
    return [
        media_pb2.DetectedFace(index=index, box=box_to_proto(face.box), score=face.score)
        for index, face in enumerate(left_to_right(faces))
    ]


def image_format_name(image_format: int) -> str:
    """PNG unless the caller asked for JPEG."""
    return FORMAT_NAMES.get(image_format, "png")


def encode(image: np.ndarray, image_format: int) -> media_pb2.EncodedImage:
    name = image_format_name(image_format)
    return media_pb2.EncodedImage(
        data=images.encode_image(image, name),
        format=media_pb2.IMAGE_FORMAT_JPEG if name == "jpeg" else media_pb2.IMAGE_FORMAT_PNG,
    )


def require(condition: bool, message: str) -> None:
    if not condition:
        raise errors.InvalidInput(message)


def opened_stream(
    requests: Iterator[Any], idle_timeout: float, rpc: str, what_follows: str
) -> tuple[Any, Iterator[Any]]:
    """A request stream's config, which must come first, and the messages after it.

    A stream that stalls for `idle_timeout` seconds, before or after its config, ends with
    InvalidInput: it would otherwise hold a server thread until the client's deadline.
    """
    guarded = with_idle_timeout(requests, idle_timeout, rpc)
    message = f"The first {rpc} message must be the config; {what_follows} follow it."
    return first_message(guarded, "config", message), guarded


def first_message(requests: Iterator[Any], field: str, message: str) -> Any:
    """The `field` (e.g. the config) that must be a stream's first message; InvalidInput
    with `message` when it comes later or never."""
    first = next(requests, None)
    require(first is not None and first.HasField(field), message)
    return getattr(first, field)


@dataclass(frozen=True)
class FrameRpc:
    """A frame stream RPC of a model service: config first, then frames, one response each."""

    service: str  # for the frames metric: "faceswap"
    name: str  # "SwapFaces"
    response_type: Callable[..., Any]  # its response message
    box_field: str  # the response field that carries the result's box


def serve_frames(
    rpc: FrameRpc,
    request_iterator: Iterator[Any],
    settings: FrameServerSettings,
    start: Callable[[Any], tuple[Engine, FrameStream]],
) -> Iterator[Any]:
    """A frame stream RPC: the config first, `start(config)` picks the engine and starts its
    stream, then one response per frame request, in order.

    Frames are decoded and submitted as they arrive, up to `frames_in_flight` ahead of the
    result being returned, so that batching engines can fill their batches.
    """
    config, requests = opened_stream(
        request_iterator, settings.request_idle_timeout_seconds, rpc.name, "the frames"
    )
    engine, stream = start(config)

    def submitted() -> Iterator[tuple[int, Future[FrameResult]]]:
        for request in requests:
            require(request.HasField("frame"), f"Only frames may follow the config in {rpc.name}.")
            frame = images.decode_image(request.frame.image.data, settings.max_frame_pixels)
            yield request.frame.index, stream.submit(frame)
        stream.finish()

    frames_done = FRAMES.labels(rpc.service, engine.name)
    frames, with_face = 0, 0
    for index, pending in read_ahead(submitted(), settings.frames_in_flight):
        result = pending.result()
        frames_done.inc()
        frames += 1
        with_face += result.face_found
        yield rpc.response_type(
            index=index,
            image=encode(result.image, config.output_format),
            face_found=result.face_found,
            engine=engine.name,
            **{rpc.box_field: box_to_proto(result.box)},
        )
    log.info("%s: %d frames with %s, %d with a face", rpc.name, frames, engine.name, with_face)


def engine_infos(statuses: Iterable[EngineStatus]) -> list[media_pb2.EngineInfo]:
    return [
        media_pb2.EngineInfo(name=s.name, ready=s.ready, detail=s.detail, device=s.device)
        for s in statuses
    ]


def engine_list(engines: EngineCatalog, response_type: Callable[..., ResponseT]) -> ResponseT:
    """A List*Engines response: every engine's status and the one `auto` resolves to."""
    return response_type(
        engines=engine_infos(engines.statuses()), default_engine=engines.default_name()
    )
