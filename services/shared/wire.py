"""Conversions between protobuf media messages and plain Python values, used by every service."""

from remind.v1 import media_pb2

from services.shared import errors, media

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
