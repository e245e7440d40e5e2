"""Still images: photos and frames as RGB uint8 arrays of shape (height, width, 3), everywhere
in Re:Mind. Decoding is refused from the header alone when the image is too large: too many
pixels, or more memory to decode than the budget (a small 16-bit RGBA PNG can need gigabytes).

The header parsers are small and ours on purpose: Pillow's `Image.open` needs a whole WebP
file before it reports a size, and refuses a forged giant header with its own global
decompression-bomb limit before ours can say what the image is.

Phones' photos come as HEIC (iPhones) and AVIF: OpenCV decodes JPEG, PNG, GIF and WebP;
libheif (through pillow-heif) decodes HEIC, and Pillow's own libavif plugin AVIF, both
applying the rotation the camera recorded.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageOps

from services.shared.errors import InvalidInput, TooLarge

SUPPORTED_PHOTO_FORMATS = "JPEG, PNG, HEIC, AVIF, GIF or WebP"

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
# What the HEIC and AVIF decoders cost per pixel, without and with transparency: the peak
# resident memory of `decode_image` on 12-megapixel photos (measured 5.2 and 11.5 for HEIC,
# 12.7-14.4 and 19.2 for AVIF, rotated or not), rounded up. libheif holds the YCbCr planes and
# one RGB(A) copy; Pillow's AVIF plugin holds dav1d's YUV frame, libavif's RGB copy, a bytes
# copy and its own 4-byte-a-pixel image.
ISOBMFF_DECODE_BYTES_PER_PIXEL = {"heic": (6, 12), "avif": (15, 21)}


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
        if self.format_name in ISOBMFF_DECODE_BYTES_PER_PIXEL:
            return self.pixels * ISOBMFF_DECODE_BYTES_PER_PIXEL[self.format_name][self.has_alpha]
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
    """Dimensions of a JPEG, PNG, HEIC, AVIF, GIF or WebP image from its header; None if not
    recognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack_from("<HH", data, 6)
        return ImageHeader("gif", width, height, has_alpha=False)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    if data[4:8] == b"ftyp":
        try:
            return _isobmff_header(data)
        except (ValueError, IndexError, struct.error):  # a box or field cut short
            return None
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


# HEIC and AVIF files are ISO base media files (ISO/IEC 14496-12): nested boxes of size, type
# and payload. The image items are listed in `meta`; each one's size is an `ispe` property,
# except what the decoders take from elsewhere: a grid's or overlay's canvas from the item's
# data (HEIF, ISO/IEC 23008-12 6.6.2.3), and an AV1 frame from the sequence header in the
# item's data (libheif holds an HEVC bitstream to its ispe; libavif does not hold AV1 to it).
# The header reports the largest of them all, so a forged one cannot slip past the limits.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_ALPHA_AUX_TYPES = (b"urn:mpeg:hevc:2015:auxid:1", b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha")
# More items, or extents of one item, than any camera writes: such a file is refused rather
# than read at length.
_MAX_ITEMS = 1000
_MAX_EXTENTS = 32
# What is read of an item's data: a grid's or overlay's header, or an AV1 item's first OBUs.
_ITEM_HEAD_BYTES = 4096
_AV1_SEQUENCE_HEADER = 1


def _isobmff_header(data: bytes) -> ImageHeader | None:
    top = {kind: (start, end) for kind, start, end in _boxes(data, 0, len(data))}
    ftyp_start, ftyp_end = top[b"ftyp"]
    brands = {data[ftyp_start : ftyp_start + 4]}
    brands |= {data[at : at + 4] for at in range(ftyp_start + 8, ftyp_end - 3, 4)}
    format_name = "avif" if brands & _AVIF_BRANDS else "heic" if brands & _HEIC_BRANDS else ""
    if not format_name or b"meta" not in top:
        return None  # an MP4 or QuickTime video, or a file cut before its item list
    meta_start, meta_end = top[b"meta"]
    meta = {kind: (start, end) for kind, start, end in _boxes(data, meta_start + 4, meta_end)}
    sizes, has_alpha = _item_properties(data, meta.get(b"iprp"))
    heads = _item_heads(data, meta.get(b"iloc"), meta.get(b"idat"))
    for item_id, item_type in _item_types(data, meta.get(b"iinf")).items():
        head = heads.get(item_id, b"")
        if item_type in (b"grid", b"iovl"):
            sizes.append(_canvas_size(item_type, head))
        elif item_type == b"av01":
            frame = _av1_frame_size(head)
            if frame is None:
                return None  # no sequence header to bound the frame: cut short or forged
            sizes.append(frame)
    if not sizes:
        return None
    width, height = max(sizes, key=lambda size: size[0] * size[1])
    return ImageHeader(format_name, width, height, has_alpha, channels=4 if has_alpha else 3)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Type, payload start and end of each box from `start` to `end`, up to the first box
    that does not fit (where a truncated file was cut)."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        payload = start + 8
        if size == 1 and payload + 8 <= end:  # a 64-bit size follows the type
            (size,) = struct.unpack_from(">Q", data, payload)
            payload += 8
        elif size == 0:  # the box runs to the end of the file
            size = end - start
        if size < payload - start or start + size > end:
            return
        yield kind, payload, start + size
        start += size


def _item_properties(
    data: bytes, iprp: tuple[int, int] | None
) -> tuple[list[tuple[int, int]], bool]:
    """Every `ispe` size in the property container, and whether any item is an alpha plane."""
    sizes, has_alpha = [], False
    for kind, start, end in _boxes(data, *iprp) if iprp else ():
        if kind != b"ipco":
            continue
        for prop, prop_start, prop_end in _boxes(data, start, end):
            # Both are full boxes: version and flags come first.
            if prop == b"ispe":
                sizes.append(struct.unpack_from(">II", data, prop_start + 4))
            elif prop == b"auxC":
                aux_type = data[prop_start + 4 : prop_end].split(b"\0")[0]
                has_alpha = has_alpha or aux_type in _ALPHA_AUX_TYPES
    return sizes, has_alpha


def _item_types(data: bytes, iinf: tuple[int, int] | None) -> dict[int, bytes]:
    """Item id -> item type ("hvc1", "av01", "grid", "Exif"...), from the `infe` entries of
    version 2 and 3 (the ones that name a type)."""
    if iinf is None:
        return {}
    start, end = iinf
    types = {}
    entries = start + 4 + (2 if data[start] == 0 else 4)  # after the entry count
    for kind, entry, _ in _boxes(data, entries, end):
        version = data[entry]
        if kind != b"infe" or version < 2:
            continue
        if version == 2:
            (item_id,) = struct.unpack_from(">H", data, entry + 4)
            type_at = entry + 8
        else:
            (item_id,) = struct.unpack_from(">I", data, entry + 4)
            type_at = entry + 10
        types[item_id] = data[type_at : type_at + 4]
        if len(types) > _MAX_ITEMS:
            raise ValueError("too many items")
    return types


def _item_heads(
    data: bytes, iloc: tuple[int, int] | None, idat: tuple[int, int] | None
) -> dict[int, bytes]:
    """Item id -> the first bytes of its data, from its first extent in `iloc` (ISO/IEC
    14496-12 8.11.3): at a file offset, or in `idat`."""
    if iloc is None:
        return {}
    start, end = iloc
    fields = _Fields(data, start + 4, end)
    version = data[start]
    offset_size, length_size = fields.nibbles()
    base_size, index_size = fields.nibbles()
    index_size = index_size if version in (1, 2) else 0
    id_size = 4 if version == 2 else 2
    item_count = fields.read(id_size)
    if item_count > _MAX_ITEMS:
        raise ValueError("too many items")
    heads = {}
    for _ in range(item_count):
        item_id = fields.read(id_size)
        method = fields.read(2) & 0xF if version in (1, 2) else 0
        fields.read(2)  # data_reference_index
        base = fields.read(base_size)
        extent_count = fields.read(2)
        if extent_count > _MAX_EXTENTS:
            raise ValueError("too many extents")
        extents = []
        for _ in range(extent_count):
            fields.read(index_size)
            extents.append((fields.read(offset_size), fields.read(length_size)))
        origin = {0: 0, 1: idat[0] if idat else None}.get(method)
        if extents and origin is not None:
            offset, length = extents[0]
            begin = origin + base + offset
            heads[item_id] = data[begin : begin + min(length or _ITEM_HEAD_BYTES, _ITEM_HEAD_BYTES)]
    return heads


class _Fields:
    """Big-endian unsigned fields of 0 to 8 bytes, read in order within [start, end)."""

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.at, self.end = data, start, end

    def read(self, size: int) -> int:
        if self.at + size > self.end:
            raise ValueError("field past the end of its box")
        value = int.from_bytes(self.data[self.at : self.at + size], "big")
        self.at += size
        return value

    def nibbles(self) -> tuple[int, int]:
        byte = self.read(1)
        return byte >> 4, byte & 0xF


def _canvas_size(item_type: bytes, head: bytes) -> tuple[int, int]:
    """Output size of a grid (version, flags, rows, columns, then the size) or an overlay
    (version, flags, four 16-bit fill values, then the size); 32-bit fields if flags & 1."""
    size_at = 4 if item_type == b"grid" else 10
    field = ">II" if head[1] & 1 else ">HH"
    return struct.unpack_from(field, head, size_at)


def _av1_frame_size(item: bytes) -> tuple[int, int] | None:
    """The largest frame of an AV1 image item, from its sequence header OBU (AV1 spec 5.3)."""
    at = 0
    while at < len(item):
        header = item[at]
        obu_type, has_extension, has_size = header >> 3 & 0xF, header & 4, header & 2
        at += 2 if has_extension else 1
        size = len(item) - at
        if has_size:
            size, at = _leb128(item, at)
        if obu_type == _AV1_SEQUENCE_HEADER:
            return _av1_max_frame(_Bits(item[at : at + size]))
        at += size
    return None


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for index in range(8):
        byte = data[at + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, at + index + 1
    raise ValueError("leb128 longer than 8 bytes")


class _Bits:
    """An AV1 bit reader: f(n) and uvlc() of the AV1 spec, section 4.10."""

    def __init__(self, data: bytes) -> None:
        self.value, self.left = int.from_bytes(data, "big"), 8 * len(data)

    def f(self, count: int) -> int:
        if count > self.left:
            raise ValueError("sequence header cut short")
        self.left -= count
        return self.value >> self.left & ((1 << count) - 1)

    def uvlc(self) -> int:
        leading_zeros = 0
        while not self.f(1):
            leading_zeros += 1
        return self.f(leading_zeros) + (1 << leading_zeros) - 1 if leading_zeros < 32 else 2**32 - 1


def _av1_max_frame(bits: _Bits) -> tuple[int, int]:
    """max_frame_width and max_frame_height of sequence_header_obu (AV1 spec 5.5.1-5.5.5)."""
    bits.f(4)  # seq_profile, still_picture
    if bits.f(1):  # reduced_still_picture_header
        bits.f(5)  # seq_level_idx[0]
    else:
        decoder_model = False
        if bits.f(1):  # timing_info_present_flag
            bits.f(64)  # num_units_in_display_tick, time_scale
            if bits.f(1):  # equal_picture_interval
                bits.uvlc()
            decoder_model = bool(bits.f(1))
            if decoder_model:
                buffer_delay_length = bits.f(5) + 1
                bits.f(42)  # num_units_in_decoding_tick, two more lengths
        initial_display_delay = bits.f(1)
        for _ in range(bits.f(5) + 1):  # operating points
            bits.f(12)  # operating_point_idc
            if bits.f(5) > 7:  # seq_level_idx
                bits.f(1)  # seq_tier
            if decoder_model and bits.f(1):
                bits.f(2 * buffer_delay_length + 1)
            if initial_display_delay and bits.f(1):
                bits.f(4)
    width_bits, height_bits = bits.f(4) + 1, bits.f(4) + 1
    return bits.f(width_bits) + 1, bits.f(height_bits) + 1


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
        if header.format_name in ISOBMFF_DECODE_BYTES_PER_PIXEL:
            image = _decode_isobmff(data, header.format_name)
        elif header.has_alpha:
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


def _decode_isobmff(data: bytes, format_name: str) -> np.ndarray | None:
    """RGB of a HEIC (libheif) or AVIF (Pillow's libavif plugin) photo, turned and mirrored
    as its `irot` and `imir` say; None if it cannot be decoded."""
    try:
        if format_name == "heic":
            decoded = np.asarray(pillow_heif.open_heif(data, convert_hdr_to_8bit=True))
        else:
            with Image.open(io.BytesIO(data), formats=["AVIF"]) as picture:
                # Pillow gives the AVIF's irot and imir as an EXIF orientation.
                ImageOps.exif_transpose(picture, in_place=True)
                decoded = np.asarray(picture)
    except (OSError, ValueError, RuntimeError):  # what both report for a damaged file
        return None
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        return decoded
    return _flatten_alpha(decoded, rgb_order=True)


def _flatten_alpha(decoded: np.ndarray, rgb_order: bool = False) -> np.ndarray:
    """RGB over a white background from whatever IMREAD_UNCHANGED returned (BGR order), or
    from RGB(A) or grey pixels in `rgb_order`, converted a band of rows at a time into one
    8-bit result."""
    height, width = decoded.shape[:2]
    flattened = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, FLATTEN_ROWS):
        rows = decoded[top : top + FLATTEN_ROWS]
        flattened[top : top + FLATTEN_ROWS] = _flatten_rows(rows, rgb_order)
    return flattened


def _flatten_rows(decoded: np.ndarray, rgb_order: bool) -> np.ndarray:
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 2:
        colour = cv2.cvtColor(np.ascontiguousarray(decoded[:, :, 0]), cv2.COLOR_GRAY2RGB)
        alpha = decoded[:, :, 1]
    else:
        colour = np.ascontiguousarray(decoded[:, :, :3])
        if not rgb_order:
            colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
        if decoded.shape[2] == 3:
            return colour
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
