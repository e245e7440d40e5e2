"""Reads a TensorFlow checkpoint (the "tensor bundle" format) without TensorFlow.

A checkpoint `PREFIX` is two kinds of files:
- `PREFIX.index`: an immutable sorted table in LevelDB's SSTable layout. Its keys are tensor
  names; each value is a serialized `BundleEntryProto` (dtype, shape, shard, offset, size,
  masked CRC-32C of the bytes). The empty key holds a `BundleHeaderProto` (shard count,
  endianness, format version).
- `PREFIX.data-SSSSS-of-NNNNN`: the raw tensor bytes, little-endian, concatenated.

Only what published model checkpoints use is supported: uncompressed table blocks and
numeric tensors; anything else is refused with a reason, never guessed at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.shared.errors import EngineNotReady

# LevelDB table format (table/format.h): a 48-byte footer ending in this magic number.
TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + CRC (4 bytes)
NO_COMPRESSION = 0

# tensorflow/core/framework/types.proto
NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}
LITTLE_ENDIAN = 0  # BundleHeaderProto.Endianness


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives in the data files (tensor_bundle.proto, BundleEntryProto)."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int


class BundleError(EngineNotReady):
    """The checkpoint files are missing, damaged or in a form this reader does not support."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise BundleError("truncated varint in the checkpoint index")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _proto_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: varints as ints, the rest as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            fields.append((number, value))
        elif wire_type == 2:
            length, position = _varint(data, position)
            fields.append((number, data[position : position + length]))
            position += length
        elif wire_type == 5:
            fields.append((number, data[position : position + 4]))
            position += 4
        elif wire_type == 1:
            fields.append((number, data[position : position + 8]))
            position += 8
        else:
            raise BundleError(f"unsupported protobuf wire type {wire_type} in the index")
    if position != len(data):
        raise BundleError("truncated protobuf message in the checkpoint index")
    return fields


def _parse_shape(data: bytes) -> tuple[int, ...]:
    # TensorShapeProto: repeated Dim dim = 2 (Dim.size = 1); unknown_rank = 3.
    dims: list[int] = []
    for number, value in _proto_fields(data):
        if number == 2 and isinstance(value, bytes):
            size = next((v for n, v in _proto_fields(value) if n == 1), 0)
            dims.append(int(size))
        elif number == 3 and value:
            raise BundleError("a tensor of unknown rank in the checkpoint")
    return tuple(dims)


def _parse_entry(name: str, data: bytes) -> BundleEntry:
    values: dict[int, int | bytes] = {}
    for number, value in _proto_fields(data):
        if number == 7:
            raise BundleError(f"tensor {name!r} is stored in slices, which is not supported")
        values[number] = value
    encoded_shape = values.get(2)
    shape = _parse_shape(encoded_shape) if isinstance(encoded_shape, bytes) else ()
    return BundleEntry(
        dtype=int(values.get(1, 0)),
        shape=shape,
        shard_id=int(values.get(3, 0)),
        offset=int(values.get(4, 0)),
        size=int(values.get(5, 0)),
    )


def _block_handle(data: bytes, position: int) -> tuple[int, int, int]:
    offset, position = _varint(data, position)
    size, position = _varint(data, position)
    return offset, size, position


def _read_block(table: bytes, offset: int, size: int) -> bytes:
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(table):
        raise BundleError("the checkpoint index is truncated")
    if table[end] != NO_COMPRESSION:
        raise BundleError("the checkpoint index uses block compression, which is not supported")
    return table[offset:end]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block (keys are prefix-compressed against the previous)."""
    if len(block) < 4:
        raise BundleError("a damaged block in the checkpoint index")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise BundleError("a damaged block in the checkpoint index")
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    position = 0
    while position < limit:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_length, position = _varint(block, position)
        key = key[:shared] + block[position : position + unshared]
        position += unshared
        entries.append((key, block[position : position + value_length]))
        position += value_length
    return entries


def read_index(index_path: Path) -> dict[str, BundleEntry]:
    """Every tensor the checkpoint index lists, by name."""
    table = index_path.read_bytes()
    if len(table) < FOOTER_BYTES:
        raise BundleError(f"{index_path.name} is too short to be a checkpoint index")
    footer = table[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_BYTES - 8)
    if magic != TABLE_MAGIC:
        raise BundleError(f"{index_path.name} is not a TensorFlow checkpoint index")
    _, _, position = _block_handle(footer, 0)  # the metaindex block: unused by bundles
    index_offset, index_size, _ = _block_handle(footer, position)

    entries: dict[str, BundleEntry] = {}
    header_seen = False
    for _, handle in _block_entries(_read_block(table, index_offset, index_size)):
        offset, size, _ = _block_handle(handle, 0)
        for key, value in _block_entries(_read_block(table, offset, size)):
            if key == b"":
                header_seen = True
                _check_header(value)
                continue
            name = key.decode()
            entries[name] = _parse_entry(name, value)
    if not header_seen:
        raise BundleError(f"{index_path.name} has no bundle header")
    return entries


def _check_header(data: bytes) -> None:
    # BundleHeaderProto: num_shards = 1, endianness = 2, version = 3.
    fields = dict(_proto_fields(data))
    if int(fields.get(2, LITTLE_ENDIAN)) != LITTLE_ENDIAN:
        raise BundleError("the checkpoint was written big-endian, which is not supported")


def data_path(prefix: Path, shard_id: int, shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard_id:05d}-of-{shards:05d}")


def read_tensors(prefix: Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint at `prefix` (e.g. `.../2stems/model`) as NumPy arrays."""
    index_path = prefix.with_name(prefix.name + ".index")
    if not index_path.is_file():
        raise BundleError(f"the checkpoint index {index_path} is missing")
    entries = read_index(index_path)
    shards = sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    if not shards:
        raise BundleError(f"the checkpoint data file {prefix}.data-00000-of-00001 is missing")
    shard_count = int(shards[0].name.rsplit("-of-", 1)[1])
    mapped = {}
    tensors: dict[str, np.ndarray] = {}
    for name, entry in entries.items():
        dtype = NUMPY_DTYPES.get(entry.dtype)
        if dtype is None:
            continue  # strings and other non-numeric bookkeeping tensors
        if entry.shard_id not in mapped:
            path = data_path(prefix, entry.shard_id, shard_count)
            if not path.is_file():
                raise BundleError(f"the checkpoint data file {path} is missing")
            mapped[entry.shard_id] = np.memmap(path, dtype=np.uint8, mode="r")
        shard = mapped[entry.shard_id]
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if entry.size != expected or entry.offset + entry.size > shard.size:
            raise BundleError(
                f"tensor {name!r} does not fit its shape {entry.shape} in the data file "
                "(truncated or damaged checkpoint)"
            )
        raw = np.asarray(shard[entry.offset : entry.offset + entry.size])
        tensors[name] = raw.view(dtype).reshape(entry.shape).copy()
    return tensors
