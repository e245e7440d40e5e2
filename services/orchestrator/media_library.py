"""Uploaded inputs and produced results, as media records in the store.

Layout (every key starts with its owner's scope: a tenant, or `{tenant}/people/{id}`):
  uploads bucket   {scope}/parts/{upload_id}/{offset:012d}   unary chunks, in order
                   {scope}/put/{upload_id}                    target of the presigned PUT
                   {scope}/media/{media_id}/{filename}        finished uploads
  results bucket   {scope}/{job_id}/{media_id}.{ext}         results (written by jobs)
  records bucket   {scope}/uploads/{upload_id}.json, {scope}/media/{media_id}.json
"""

import datetime
import hashlib
import io
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from remind.v1 import media_pb2

from services.orchestrator.config import OrchestratorSettings
from services.shared import errors
from services.shared.storage import ObjectStore

MEDIA_PREFIX = "media/"
UPLOAD_PREFIX = "uploads/"
_ID = re.compile(r"^[0-9a-f]{32}$")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _id_from(name: str, prefix: str, what: str) -> str:
    if not name.startswith(prefix) or not _ID.match(name[len(prefix) :]):
        raise errors.InvalidInput(f"{what} {name!r} is not a valid name; expected {prefix}<id>")
    return name[len(prefix) :]


def _safe_filename(filename: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name)[:80]
    return cleaned.strip(".") or "data"


@dataclass(frozen=True)
class MediaRecord:
    name: str
    bucket: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    filename: str
    create_time: str

    def storage_object(self) -> media_pb2.StorageObject:
        """Where a model service reads the media itself, instead of its bytes on the wire."""
        return media_pb2.StorageObject(bucket=self.bucket, key=self.key)


class _ChunkReader:
    """A file-like view over byte chunks, so a concatenation streams into put_object."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self.digest.update(chunk)
            self._buffer.extend(chunk)
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class MediaLibrary:
    def __init__(self, store: ObjectStore, settings: OrchestratorSettings) -> None:
        self.store = store
        self.settings = settings

    # Uploads by unary chunks or presigned PUT.

    def create_upload(
        self, scope: str, content_type: str, filename: str, declared_bytes: int
    ) -> tuple[str, str, datetime.datetime]:
        self._check_size(declared_bytes)
        upload_id = uuid.uuid4().hex
        record = {
            "content_type": content_type or "application/octet-stream",
            "filename": _safe_filename(filename),
            "received_bytes": 0,
            "create_time": now_iso(),
        }
        self.store.put_record(
            self.settings.records_bucket, f"{scope}/uploads/{upload_id}.json", record
        )
        ttl = datetime.timedelta(seconds=self.settings.presigned_url_seconds)
        put_url = self.store.presigned_put(
            self.settings.uploads_bucket, f"{scope}/put/{upload_id}", ttl
        )
        return UPLOAD_PREFIX + upload_id, put_url, datetime.datetime.now(datetime.UTC) + ttl

    def append_upload(self, scope: str, upload: str, offset: int, data: bytes) -> int:
        upload_id = _id_from(upload, UPLOAD_PREFIX, "Upload")
        record = self._upload_record(scope, upload_id)
        received = int(record["received_bytes"])
        if offset != received:
            raise errors.FailedPrecondition(
                f"Chunk offset {offset} does not match the {received} bytes received so far; "
                f"resend from offset {received}."
            )
        if not data:
            raise errors.InvalidInput("The chunk is empty.")
        if len(data) > self.settings.max_chunk_bytes:
            raise errors.TooLarge(f"Chunks are limited to {self.settings.max_chunk_bytes} bytes.")
        self._check_size(received + len(data))
        self.store.put_new(
            self.settings.uploads_bucket,
            f"{scope}/parts/{upload_id}/{offset:012d}",
            io.BytesIO(data),
            len(data),
        )
        record["received_bytes"] = received + len(data)
        self.store.put_record(
            self.settings.records_bucket, f"{scope}/uploads/{upload_id}.json", record
        )
        return record["received_bytes"]

    def finish_upload(self, scope: str, upload: str) -> MediaRecord:
        upload_id = _id_from(upload, UPLOAD_PREFIX, "Upload")
        record = self._upload_record(scope, upload_id)
        bucket = self.settings.uploads_bucket
        part_keys = sorted(self.store.list_keys(bucket, f"{scope}/parts/{upload_id}/"))
        put_key = f"{scope}/put/{upload_id}"
        if part_keys:
            chunks = (chunk for key in part_keys for chunk in self.store.iter_chunks(bucket, key))
            media = self._store_media(scope, chunks, record["content_type"], record["filename"])
            for key in part_keys:
                self.store.delete(bucket, key)
        elif self.store.exists(bucket, put_key):
            size = self.store.size(bucket, put_key)
            if size > self.settings.max_upload_bytes:
                self.store.delete(bucket, put_key)
                self._check_size(size)
            media = self._store_media(
                scope,
                self.store.iter_chunks(bucket, put_key),
                record["content_type"],
                record["filename"],
            )
            self.store.delete(bucket, put_key)
        else:
            raise errors.FailedPrecondition(
                f"Upload {upload} has no data yet: append chunks or PUT to its URL first."
            )
        self.store.delete(self.settings.records_bucket, f"{scope}/uploads/{upload_id}.json")
        return media

    # Uploads by client stream, and results produced by jobs.

    def upload_stream(
        self, scope: str, content_type: str, filename: str, chunks: Iterator[bytes]
    ) -> MediaRecord:
        return self._store_media(
            scope, self._limited(chunks), content_type, _safe_filename(filename)
        )

    def add_result(self, scope: str, job_id: str, path: Path, content_type: str) -> MediaRecord:
        media_id = uuid.uuid4().hex
        key = f"{scope}/{job_id}/{media_id}{path.suffix}"
        self.store.put_new_file(self.settings.results_bucket, key, path, content_type)
        with open(path, "rb") as result:
            digest = hashlib.file_digest(result, "sha256").hexdigest()
        media = MediaRecord(
            MEDIA_PREFIX + media_id,
            self.settings.results_bucket,
            key,
            content_type,
            path.stat().st_size,
            digest,
            path.name,
            now_iso(),
        )
        self._put_media_record(scope, media_id, media)
        return media

    # Reading.

    def get(self, scope: str, name: str) -> MediaRecord:
        media_id = _id_from(name, MEDIA_PREFIX, "Media")
        try:
            record = self.store.get_record(
                self.settings.records_bucket, f"{scope}/media/{media_id}.json"
            )
        except errors.NotFound:
            raise errors.NotFound(f"Media {name} does not exist.") from None
        return MediaRecord(**record)

    def delete(self, scope: str, name: str) -> None:
        """Removes the media's bytes, then its record: nothing of it stays in storage."""
        media = self.get(scope, name)
        self.store.delete(media.bucket, media.key)
        self.store.delete(
            self.settings.records_bucket, f"{scope}/media/{media.name[len(MEDIA_PREFIX) :]}.json"
        )

    def delete_scope(self, scope: str) -> int:
        """Removes every object of an owner's scope from every bucket; returns how many.

        Records go last, so that a deletion cut short can be run again and finds them."""
        deleted = 0
        buckets = (
            self.settings.uploads_bucket,
            self.settings.results_bucket,
            self.settings.templates_bucket,
            self.settings.records_bucket,
        )
        for bucket in buckets:
            for key in self.store.list_keys(bucket, f"{scope}/"):
                self.store.delete(bucket, key)
                deleted += 1
        return deleted

    def read_chunks(self, media: MediaRecord) -> Iterator[bytes]:
        return self.store.iter_chunks(media.bucket, media.key)

    def read_bytes(self, media: MediaRecord, limit: int) -> bytes:
        if media.size_bytes > limit:
            raise errors.TooLarge(
                f"{media.name} is {media.size_bytes} bytes; the limit is {limit}."
            )
        return self.store.get_bytes(media.bucket, media.key)

    def download(self, media: MediaRecord, path: Path) -> None:
        self.store.download(media.bucket, media.key, path)

    def url(self, media: MediaRecord) -> tuple[str, datetime.datetime]:
        ttl = datetime.timedelta(seconds=self.settings.presigned_url_seconds)
        return (
            self.store.presigned_get(media.bucket, media.key, ttl),
            datetime.datetime.now(datetime.UTC) + ttl,
        )

    # Internals.

    def _check_size(self, size: int) -> None:
        if size > self.settings.max_upload_bytes:
            raise errors.TooLarge(
                f"Uploads are limited to {self.settings.max_upload_bytes // (1024 * 1024)} MiB; "
                f"this one is {size} bytes."
            )

    def _limited(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        total = 0
        for chunk in chunks:
            total += len(chunk)
            self._check_size(total)
            yield chunk

    def _upload_record(self, scope: str, upload_id: str) -> dict:
        try:
            return self.store.get_record(
                self.settings.records_bucket, f"{scope}/uploads/{upload_id}.json"
            )
        except errors.NotFound:
            raise errors.NotFound(
                f"Upload uploads/{upload_id} does not exist or is already finished."
            ) from None

    def _store_media(
        self, scope: str, chunks: Iterable[bytes], content_type: str, filename: str
    ) -> MediaRecord:
        media_id = uuid.uuid4().hex
        key = f"{scope}/media/{media_id}/{filename}"
        reader = _ChunkReader(chunks)
        self.store.put_new(
            self.settings.uploads_bucket,
            key,
            reader,  # type: ignore[arg-type]
            content_type=content_type or "application/octet-stream",
        )
        size = self.store.size(self.settings.uploads_bucket, key)
        if size == 0:
            self.store.delete(self.settings.uploads_bucket, key)
            raise errors.InvalidInput("The upload is empty.")
        media = MediaRecord(
            MEDIA_PREFIX + media_id,
            self.settings.uploads_bucket,
            key,
            content_type or "application/octet-stream",
            size,
            reader.digest.hexdigest(),
            filename,
            now_iso(),
        )
        self._put_media_record(scope, media_id, media)
        return media

    def _put_media_record(self, scope: str, media_id: str, media: MediaRecord) -> None:
        self.store.put_record(
            self.settings.records_bucket, f"{scope}/media/{media_id}.json", asdict(media)
        )
