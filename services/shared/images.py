"""Still images: photos and frames as RGB uint8 arrays of shape (height, width, 3), everywhere
in Re:Mind. Decoding is refused from the header alone when the image is too large: too many
pixels, or more memory to decode than the budget (a small 16-bit RGBA PNG can need gigabytes).

The header parsers are small and ours on purpose: Pillow's `Image.open` needs a whole WebP
file before it reports a size, and refuses a forged giant header with its own global
decompression-bomb limit before ours can say what the image is.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from services.shared.errors import InvalidInput, TooLarge

SUPPORTED_PHOTO_FORMATS = "JPEG, PNG, GIF or WebP"

# Level 1 of 9: frames cross the network between services many times per job, so encode speed
# matters more than the last few percent of size.
PNG_COMPRESSION_LEVEL = 1

# What an 8-bit RGB image costs to decode, per pixel: OpenCV's imdecode holds a second copy of
# the decoded pixels while it decodes (measured with OpenCV 5.1: peak = 2x the result). A pixel
# limit alone is stated in these bytes, so deeper or transparent images get fewer pixels.
RGB_DECODE_BYTES_PER_PIXEL = 2 * 3
# Transparent images are flattened onto white this many rows at a time, so the float copies
# that blending needs stay a few megabytes whatever the image size.
FLATTEN_ROWS = 256


class DecodeBudget:
    """Memory that the decodes running at once in a process share: each image is bounded by
    its own budget, and this bounds their sum, so concurrent calls cannot add theirs up. A
    decode waits for room, and is refused with a retry hint if none comes soon."""

    def __init__(self, total_bytes: int, wait_seconds: float = 10.0) -> None:
        self.total_bytes = total_bytes
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._room = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.total_bytes)
        with self._room:
            if not self._room.wait_for(
                lambda: self.in_use + nbytes <= self.total_bytes, self.wait_seconds
            ):
                raise TooLarge(
                    "The server is decoding other large images right now: retry in a few "
                    "seconds.",
                    retry_after_seconds=2.0,
                )
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._room:
                self.in_use -= nbytes
                self._room.notify_all()


# Three of the largest photos at once (229 MiB each), or sixty 1080p frames.
DECODE_BUDGET = DecodeBudget(768 * 1024 * 1024)


@dataclass(frozen=True)
class ImageHeader:
    """What the first bytes of an image file say, read before any pixel is decoded."""

    format_name: str
    width: int
    height: int
    has_alpha: bool
    # Channels and bits per channel as stored; GIF, JPEG and WebP are 8-bit.
    channels: int = 3
    bits_per_channel: int = 8

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def decode_bytes(self) -> int:
        """Peak memory of `decode_image` for this image, every intermediate copy included."""
        if not self.has_alpha:  # decoded straight to 8-bit RGB, whatever the stored depth
            return self.pixels * RGB_DECODE_BYTES_PER_PIXEL
        # Decoded as stored (two copies while decoding), then flattened into 8-bit RGB.
        stored = self.channels * (2 if self.bits_per_channel > 8 else 1)
        return self.pixels * max(2 * stored, stored + 3)

    def describe(self) -> str:
        """"16-bit PNG with transparency", "JPEG": what makes an image cost what it does."""
        depth = f"{self.bits_per_channel}-bit " if self.bits_per_channel > 8 else ""
        alpha = " with transparency" if self.has_alpha else ""
        return f"{depth}{self.format_name.upper()}{alpha}"


def read_image_header(data: bytes) -> ImageHeader | None:
    """Dimensions of a JPEG, PNG, GIF or WebP image from its header; None if not recognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack_from("<HH", data, 6)
        return ImageHeader("gif", width, height, has_alpha=False)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    return None


def _png_header(data: bytes) -> ImageHeader | None:
    # The IHDR chunk must come first (PNG spec 5.6): length, type, width, height, depth, colour.
    if len(data) < 26 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    bit_depth, colour_type = data[24], data[25]
    # Colour types (PNG spec 11.2.2): 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA.
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type, 4)
    return ImageHeader(
        "png",
        width,
        height,
        has_alpha=colour_type in (4, 6),
        channels=channels,
        bits_per_channel=bit_depth,
    )


# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_header(data: bytes) -> ImageHeader | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (segment_length,) = struct.unpack_from(">H", data, offset + 2)
        if marker in _JPEG_SOF_MARKERS:
            if offset + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, offset + 5)
            return ImageHeader("jpeg", width, height, has_alpha=False)
        offset += 2 + segment_length
    return None


def _webp_header(data: bytes) -> ImageHeader | None:
    # Layouts from the WebP container specification (RFC 9649, section 2).
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, has_alpha=False)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("webp", width, height, has_alpha=bool(bits >> 28 & 1))
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height, has_alpha=bool(data[20] & 0x10))
    return None


def decode_image(data: bytes, max_pixels: int, max_bytes: int | None = None) -> np.ndarray:
    """Decode a photo to RGB, refusing it from its header alone if it has too many pixels or
    would need more than `max_bytes` of memory to decode (by default, what `max_pixels` of
    8-bit RGB need).

    EXIF orientation is applied, greyscale is expanded to RGB and transparency is flattened
    onto white (a cut-out portrait should look like one on a plain background).
    """
    if not data:
        raise InvalidInput(f"The photo is empty: upload a {SUPPORTED_PHOTO_FORMATS} image.")
    header = read_image_header(data)
    if header is None:
        raise InvalidInput(
            f"The photo is not a {SUPPORTED_PHOTO_FORMATS} image, or its header is damaged."
        )
    if header.width == 0 or header.height == 0:
        raise InvalidInput("The photo header gives a size of zero pixels: the file is damaged.")
    if header.width * header.height > max_pixels:
        raise TooLarge(
            f"The photo is {header.width}x{header.height} "
            f"({header.width * header.height / 1e6:.1f} megapixels), over the limit of "
            f"{max_pixels / 1e6:.1f} megapixels: resize it and upload it again."
        )
    budget = max_pixels * RGB_DECODE_BYTES_PER_PIXEL if max_bytes is None else max_bytes
    if header.decode_bytes() > budget:
        raise TooLarge(
            f"The photo is a {header.width}x{header.height} {header.describe()}, which needs "
            f"{header.decode_bytes() / 2**20:,.0f} MiB of memory to decode, over the limit of "
            f"{budget / 2**20:,.0f} MiB: save it as an 8-bit JPEG or PNG without transparency, "
            "or resize it."
        )

    buffer = np.frombuffer(data, dtype=np.uint8)
    with DECODE_BUDGET.reserve(header.decode_bytes()):
        if header.has_alpha:
            # IMREAD_UNCHANGED keeps the alpha channel; the formats that carry one here (PNG,
            # WebP) rarely carry an EXIF orientation, which this flag would ignore.
            decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
            image = None if decoded is None else _flatten_alpha(decoded)
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise InvalidInput(
            f"The photo looks like a {header.format_name.upper()} file but cannot be decoded: "
            "it is probably truncated or damaged."
        )
    return image


def _flatten_alpha(decoded: np.ndarray) -> np.ndarray:
    """RGB over a white background from whatever IMREAD_UNCHANGED returned (BGR order),
    converted a band of rows at a time into one 8-bit result."""
    height, width = decoded.shape[:2]
    flattened = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, FLATTEN_ROWS):
        flattened[top : top + FLATTEN_ROWS] = _flatten_rows(decoded[top : top + FLATTEN_ROWS])
    return flattened


def _flatten_rows(decoded: np.ndarray) -> np.ndarray:
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    channels = decoded.shape[2]
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if channels == 2:
        colour = cv2.cvtColor(np.ascontiguousarray(decoded[:, :, 0]), cv2.COLOR_GRAY2RGB)
        alpha = decoded[:, :, 1]
    else:
        colour = cv2.cvtColor(np.ascontiguousarray(decoded[:, :, :3]), cv2.COLOR_BGR2RGB)
        alpha = decoded[:, :, 3]
    weight = alpha[:, :, np.newaxis].astype(np.float32) / 255.0
    flattened = colour.astype(np.float32) * weight + 255.0 * (1.0 - weight)
    return np.rint(flattened).astype(np.uint8)


def encode_image(image: np.ndarray, fmt: str = "png", jpeg_quality: int = 92) -> bytes:
    """Encode an RGB frame as PNG (lossless, fast) or JPEG."""
    check_frame(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        options = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION_LEVEL]
        ok, encoded = cv2.imencode(".png", bgr, options)
    elif fmt in ("jpeg", "jpg"):
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        raise ValueError(f"unknown image format {fmt!r}: use 'png' or 'jpeg'")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} frame as {fmt}")
    return encoded.tobytes()


def check_frame(frame: np.ndarray, width: int | None = None, height: int | None = None) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame, got {frame.dtype} {frame.shape}")
    if width is not None and frame.shape[:2] != (height, width):
        actual = f"{frame.shape[1]}x{frame.shape[0]}"
        raise ValueError(f"expected a {width}x{height} frame, got {actual}")
