"""Uploaded inputs and produced results, as media records in the store.

Layout (every key starts with its owner's scope: a tenant, or `{tenant}/people/{id}`):
  uploads bucket   {scope}/parts/{upload_id}/{offset:012d}-{sha256}  appended chunks
                   {scope}/form/{upload_id}                        target of the upload form
                   {scope}/media/{media_id}/{filename}             finished uploads
  results bucket   {scope}/{job_id}/{media_id}.{ext}               results (written by jobs)
  records bucket   {scope}/uploads/{upload_id}.json, {scope}/media/{media_id}.json

An upload's record is its one writer at a time: every change to it is a compare-and-set on
its version, so appends and finishes from any replica, and their retries, take turns on it.
It goes open (takes chunks) -> sealed (being finished, takes none) -> done (names its media).
A chunk's part is written before the record that acknowledges it, under a key named by its
bytes, so a retried chunk rewrites the same bytes and an acknowledged chunk is always stored.
A part no record owns (the process died between the two writes) is removed by the sweeper.
"""

import datetime
import hashlib
import io
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from remind.v1 import media_pb2

from services.orchestrator.config import OrchestratorSettings
from services.shared import errors
from services.shared.storage import ObjectStore

MEDIA_PREFIX = "media/"
UPLOAD_PREFIX = "uploads/"
_ID = re.compile(r"^[0-9a-f]{32}$")
# Stored and served only as one of these; anything else is kept as opaque bytes, so our
# storage origin never serves a caller's HTML or script.
CONTENT_TYPES = frozenset(
    {
        "image/png", "image/jpeg", "image/webp", "image/gif",
        "image/heic", "image/heif", "image/avif",
        "video/mp4", "video/quicktime", "video/webm",
        "audio/wav", "audio/x-wav", "audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg",
        "audio/webm", "audio/flac",
    }
)  # fmt: skip
OPAQUE = "application/octet-stream"
# Compare-and-set attempts before giving up on a record that keeps changing under us.
MAX_RACES = 20
OPEN, SEALED, DONE = "open", "sealed", "done"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def allowed_content_type(content_type: str) -> str:
    cleaned = content_type.split(";")[0].strip().lower()
    return cleaned if cleaned in CONTENT_TYPES else OPAQUE


def _id_from(name: str, prefix: str, what: str) -> str:
    if not name.startswith(prefix) or not _ID.match(name[len(prefix) :]):
        raise errors.InvalidInput(
            f"{what} {errors.shown(name)} is not a valid name; expected {prefix}<id>"
        )
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


@dataclass(frozen=True)
class Part:
    offset: int
    size: int
    sha256: str


@dataclass
class Upload:
    """An upload's record."""

    content_type: str
    filename: str
    declared_bytes: int
    create_time: str
    state: str = OPEN
    parts: list[Part] = field(default_factory=list)
    media: str = ""

    @classmethod
    def of(cls, record: dict) -> "Upload":
        return cls(**{**record, "parts": [Part(**part) for part in record["parts"]]})

    @property
    def received_bytes(self) -> int:
        return sum(part.size for part in self.parts)

    def part_at(self, offset: int) -> Part | None:
        return next((part for part in self.parts if part.offset == offset), None)


@dataclass(frozen=True)
class UploadForm:
    """Where and how a browser POSTs the whole file at once, instead of appending chunks."""

    url: str
    fields: dict[str, str]
    expire_time: datetime.datetime


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


def part_key(scope: str, upload_id: str, part: Part) -> str:
    return f"{scope}/parts/{upload_id}/{part.offset:012d}-{part.sha256}"


def form_key(scope: str, upload_id: str) -> str:
    return f"{scope}/form/{upload_id}"


class MediaLibrary:
    def __init__(self, store: ObjectStore, settings: OrchestratorSettings) -> None:
        self.store = store
        self.settings = settings

    # Uploads by unary chunks or by form.

    def create_upload(
        self, scope: str, content_type: str, filename: str, declared_bytes: int
    ) -> tuple[str, UploadForm]:
        self._check_size(declared_bytes)
        if declared_bytes == 0:
            raise errors.InvalidInput("Declare the upload's size_bytes (more than 0).")
        upload_id = uuid.uuid4().hex
        upload = Upload(
            allowed_content_type(content_type), _safe_filename(filename), declared_bytes, now_iso()
        )
        if self.store.replace_record(
            self.settings.records_bucket, self._upload_key(scope, upload_id), asdict(upload), ""
        ) is None:
            raise errors.Unavailable("The upload could not be created; try again.")
        ttl = datetime.timedelta(seconds=self.settings.presigned_url_seconds)
        url, fields = self.store.presigned_post(
            self.settings.uploads_bucket,
            form_key(scope, upload_id),
            upload.content_type,
            declared_bytes,
            ttl,
        )
        form = UploadForm(url, fields, datetime.datetime.now(datetime.UTC) + ttl)
        return UPLOAD_PREFIX + upload_id, form

    def append_upload(self, scope: str, upload_name: str, offset: int, data: bytes) -> int:
        """Stores a chunk at `offset` and returns the bytes received. Sending the same chunk
        again (a retry) is acknowledged again and changes nothing."""
        upload_id = _id_from(upload_name, UPLOAD_PREFIX, "Upload")
        if not data:
            raise errors.InvalidInput("The chunk is empty.")
        if len(data) > self.settings.max_chunk_bytes:
            raise errors.TooLarge(f"Chunks are limited to {self.settings.max_chunk_bytes} bytes.")
        part = Part(offset, len(data), hashlib.sha256(data).hexdigest())
        written = False

        def add_part(upload: Upload) -> bool:
            nonlocal written
            if upload.state != OPEN:
                raise self._not_open(upload_name, upload)
            stored = upload.part_at(offset)
            if stored == part:
                return False  # a retry of an acknowledged chunk
            received = upload.received_bytes
            if offset != received:
                raise errors.FailedPrecondition(
                    f"Chunk offset {offset} does not match the {received} bytes received so "
                    f"far; resend from offset {received}."
                )
            self._check_size(received + len(data))
            if received + len(data) > upload.declared_bytes:
                raise errors.InvalidInput(
                    f"The upload was declared as {upload.declared_bytes} bytes; this chunk "
                    f"would make it {received + len(data)}."
                )
            if not written:
                self.store.put(
                    self.settings.uploads_bucket,
                    part_key(scope, upload_id, part),
                    io.BytesIO(data),
                    len(data),
                    OPAQUE,
                )
                written = True
            upload.parts.append(part)
            return True

        return self._change(scope, upload_id, upload_name, add_part).received_bytes

    def finish_upload(self, scope: str, upload_name: str) -> MediaRecord:
        """Seals the upload (no chunk is taken after this) and stores its media. Finishing
        again, or after a crash part-way, returns the same media."""
        upload_id = _id_from(upload_name, UPLOAD_PREFIX, "Upload")

        def seal(upload: Upload) -> bool:
            if upload.state != OPEN:
                return False
            if not upload.parts and not self.store.exists(
                self.settings.uploads_bucket, form_key(scope, upload_id)
            ):
                raise errors.FailedPrecondition(
                    f"Upload {upload_name} has no data yet: append chunks or post its form first."
                )
            upload.state = SEALED
            return True

        upload = self._change(scope, upload_id, upload_name, seal)
        if upload.state == DONE:
            try:
                return self.get(scope, upload.media)
            except errors.NotFound:
                raise errors.NotFound(
                    f"Upload {upload_name} was finished and its media since deleted."
                ) from None
        # The media takes the upload's id: a finish retried after a crash rewrites the same
        # object and record instead of leaving a second copy.
        media = self._store_media(
            scope, upload_id, self._upload_chunks(scope, upload_id, upload), upload
        )

        def mark_done(upload: Upload) -> bool:
            upload.state, upload.media = DONE, media.name
            return True

        self._change(scope, upload_id, upload_name, mark_done)
        self._delete_data(scope, upload_id, upload)
        return media

    def expire_upload(self, scope: str, upload_id: str) -> None:
        """Removes an upload's record and every chunk or form object it holds."""
        key = self._upload_key(scope, upload_id)
        try:
            upload = Upload.of(self.store.get_record(self.settings.records_bucket, key))
        except errors.NotFound:
            return
        self._delete_data(scope, upload_id, upload)
        self.store.delete(self.settings.records_bucket, key)

    # Uploads by client stream, and results produced by jobs.

    def upload_stream(
        self, scope: str, content_type: str, filename: str, chunks: Iterator[bytes]
    ) -> MediaRecord:
        upload = Upload(allowed_content_type(content_type), _safe_filename(filename), 0, now_iso())
        return self._store_media(scope, uuid.uuid4().hex, self._limited(chunks), upload)

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
        served_as = allowed_content_type(media.content_type)
        return (
            self.store.presigned_get(media.bucket, media.key, ttl, served_as),
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

    def _upload_key(self, scope: str, upload_id: str) -> str:
        return f"{scope}/uploads/{upload_id}.json"

    def _change(
        self,
        scope: str,
        upload_id: str,
        upload_name: str,
        change: Callable[[Upload], bool],
    ) -> Upload:
        """Applies `change` to the upload's record as one compare-and-set, reading again and
        re-applying when another writer came first. `change` returns False to write nothing."""
        bucket, key = self.settings.records_bucket, self._upload_key(scope, upload_id)
        for _ in range(MAX_RACES):
            try:
                record, version = self.store.get_versioned_record(bucket, key)
            except errors.NotFound:
                raise errors.NotFound(f"Upload {upload_name} does not exist.") from None
            upload = Upload.of(record)
            if not change(upload):
                return upload
            if self.store.replace_record(bucket, key, asdict(upload), version) is not None:
                return upload
        raise errors.Unavailable(
            f"Upload {upload_name} is being changed by many calls at once; try again.",
            retry_after_seconds=1,
        )

    @staticmethod
    def _not_open(upload_name: str, upload: Upload) -> errors.RemindError:
        if upload.state == DONE:
            return errors.FailedPrecondition(
                f"Upload {upload_name} is already finished as {upload.media}; "
                "start a new upload to send more."
            )
        return errors.FailedPrecondition(
            f"Upload {upload_name} is being finished and takes no more chunks."
        )

    def _upload_chunks(self, scope: str, upload_id: str, upload: Upload) -> Iterator[bytes]:
        bucket = self.settings.uploads_bucket
        if not upload.parts:
            key = form_key(scope, upload_id)
            size = self.store.size(bucket, key)
            if size > upload.declared_bytes:  # the form's policy already refuses this
                raise errors.InvalidInput(
                    f"The posted file is {size} bytes; the upload was declared as "
                    f"{upload.declared_bytes}."
                )
            return self.store.iter_chunks(bucket, key)
        return (
            chunk
            for part in upload.parts
            for chunk in self.store.iter_chunks(bucket, part_key(scope, upload_id, part))
        )

    def _delete_data(self, scope: str, upload_id: str, upload: Upload) -> None:
        bucket = self.settings.uploads_bucket
        for part in upload.parts:
            self.store.delete(bucket, part_key(scope, upload_id, part))
        self.store.delete(bucket, form_key(scope, upload_id))

    def _store_media(
        self, scope: str, media_id: str, chunks: Iterable[bytes], upload: Upload
    ) -> MediaRecord:
        key = f"{scope}/media/{media_id}/{upload.filename}"
        reader = _ChunkReader(chunks)
        self.store.put(
            self.settings.uploads_bucket, key, reader, -1, upload.content_type  # type: ignore[arg-type]
        )
        size = self.store.size(self.settings.uploads_bucket, key)
        if size == 0:
            self.store.delete(self.settings.uploads_bucket, key)
            raise errors.InvalidInput("The upload is empty.")
        media = MediaRecord(
            MEDIA_PREFIX + media_id,
            self.settings.uploads_bucket,
            key,
            upload.content_type,
            size,
            reader.digest.hexdigest(),
            upload.filename,
            upload.create_time,
        )
        self._put_media_record(scope, media_id, media)
        return media

    def _put_media_record(self, scope: str, media_id: str, media: MediaRecord) -> None:
        self.store.put_record(
            self.settings.records_bucket, f"{scope}/media/{media_id}.json", asdict(media)
        )
