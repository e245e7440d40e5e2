"""Conversions between protobuf media messages and plain Python values, used by every service."""

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
from remind.v1 import media_pb2

from services.shared import errors, media
from services.shared.engine_catalog import EngineStatus

Box = tuple[int, int, int, int]

FORMAT_NAMES = {
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


def image_format_name(image_format: int) -> str:
    """PNG unless the caller asked for JPEG."""
    return FORMAT_NAMES.get(image_format, "png")


def encode(image, image_format: int) -> media_pb2.EncodedImage:  # type: ignore[no-untyped-def]
    name = image_format_name(image_format)
    return media_pb2.EncodedImage(
        data=media.encode_image(image, name),
        format=media_pb2.IMAGE_FORMAT_JPEG if name == "jpeg" else media_pb2.IMAGE_FORMAT_PNG,
    )


def require(condition: bool, message: str) -> None:
    if not condition:
        raise errors.InvalidInput(message)


def first_message(requests: Iterator[Any], field: str, message: str) -> Any:
    """The `field` (e.g. the config) that must be a stream's first message; InvalidInput
    with `message` when it comes later or never."""
    first = next(requests, None)
    require(first is not None and first.HasField(field), message)
    return getattr(first, field)


def submitted_frames(
    requests: Iterator[Any],
    submit: Callable[[np.ndarray], Future],
    max_frame_pixels: int,
    rpc: str,
) -> Iterator[tuple[int, Future]]:
    """Decodes each frame request that follows a stream's config and hands it to `submit`."""
    for request in requests:
        require(request.HasField("frame"), f"Only frames may follow the config in {rpc}.")
        frame = media.decode_image(request.frame.image.data, max_frame_pixels)
        yield request.frame.index, submit(frame)


def engine_infos(statuses: Iterable[EngineStatus]) -> list[media_pb2.EngineInfo]:
    return [
        media_pb2.EngineInfo(name=s.name, ready=s.ready, detail=s.detail, device=s.device)
        for s in statuses
    ]
