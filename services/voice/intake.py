"""Getting a recording onto local disk from a SeparateVoice stream or the store, within limits.

Recordings are spooled to a temporary file rather than piped: containers such as MP4/M4A keep
their index at the end, ffprobe must read the header before anything is decoded, and the
byte limit is enforced as the bytes arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from minio.helpers import check_bucket_name
from minio.helpers import check_object_name as check_key

from services.shared.errors import InvalidInput, TooLarge, shown
from services.shared.storage import ObjectStore

# S3's limit on a key's length, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def spool_chunks(chunks: Iterator[bytes], path: Path, max_bytes: int) -> int:
    """Writes chunks to `path`; TooLarge past `max_bytes`. Returns the size."""
    size = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(
                    f"The recording is over the limit of {max_bytes // (1024 * 1024)} MiB: "
                    "trim it to the part with the voice."
                )
            out.write(chunk)
    return size


def check_object_name(bucket: str, key: str) -> None:
    """A caller's bucket and key, refused as S3 would refuse them, before the store is asked
    (the SDK raises a bare ValueError for some, and the server a BadRequest for others)."""
    if not bucket or not key:
        raise InvalidInput("The source object needs both a bucket and a key.")
    try:
        check_bucket_name(bucket, strict=True)  # as S3 names them: no ":" or "_"
    except ValueError:
        raise InvalidInput(f"{shown(bucket)} is not a valid S3 bucket name.") from None
    try:
        check_key(key)
    except ValueError:
        raise InvalidInput(
            f"{shown(key)} is not a valid key: it is blank or has a '.' or '..' segment."
        ) from None
    if len(key.encode()) > MAX_KEY_BYTES or any(ord(char) < 32 for char in key):
        raise InvalidInput(f"Keys are at most {MAX_KEY_BYTES} bytes without control characters.")


def fetch_object(store: ObjectStore, bucket: str, key: str, path: Path, max_bytes: int) -> int:
    check_object_name(bucket, key)
    size = store.size(bucket, key)
    if size > max_bytes:
        raise TooLarge(
            f"{key} is {size // (1024 * 1024)} MiB, over the limit of "
            f"{max_bytes // (1024 * 1024)} MiB: trim it to the part with the voice."
        )
    store.download(bucket, key, path)
    return size
