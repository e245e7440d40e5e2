"""The S3 store, spoken only through the `minio` SDK (SeaweedFS locally, MinIO in production).

Objects are never overwritten in place: `put_new` refuses an existing key, so a result is
always written under a fresh key before anything points at it; `put` writes content-addressed
keys, where a rewrite stores the same bytes. Records (small JSON documents that describe jobs
and media) are the one thing replaced: `put_record`, or `replace_record`, a compare-and-set on
the record's ETag (S3 conditional writes) for records that many writers change.
"""

import datetime
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
from minio import Minio
from minio.datatypes import PostPolicy
from minio.error import S3Error

from services.shared import errors
from services.shared.settings import S3Settings

CHUNK_BYTES = 1024 * 1024
_MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchUpload")
_CHANGED = ("PreconditionFailed", "ConditionalRequestConflict")

log = logging.getLogger(__name__)


def _translate(error: Exception, key: str) -> errors.RemindError:
    """The domain error for a failed storage call. Keys stay in the log: they are internal."""
    log.warning("storage call on %s failed: %s", key, error)
    if isinstance(error, S3Error) and error.code in _MISSING:
        return errors.NotFound("The stored object does not exist.")
    if isinstance(error, S3Error):
        return errors.Unavailable(f"The request to storage was refused ({error.code}); try again.")
    return errors.Unavailable("Cannot reach storage right now; try again.")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime.datetime


@dataclass(frozen=True)
class PartialUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime.datetime


class ObjectStore:
    def __init__(self, settings: S3Settings) -> None:
        # Short timeouts and few retries: a dead store must surface as UNAVAILABLE, not a hang.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=30),
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
            maxsize=16,
        )
        self.client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        # Presigned URLs are for clients outside the cluster: sign them for the address those
        # clients reach (signing is local, it makes no request).
        public_secure = settings.public_secure if settings.public_endpoint else settings.secure
        public_endpoint = settings.public_endpoint or settings.endpoint
        self.public_client = Minio(
            public_endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=public_secure,
            region=settings.region,
        )
        self.public_url = f"{'https' if public_secure else 'http'}://{public_endpoint}"

    def ensure_buckets(self, *buckets: str) -> None:
        for bucket in buckets:
            try:
                if not self.client.bucket_exists(bucket):
                    self.client.make_bucket(bucket)
            except (S3Error, urllib3.exceptions.HTTPError) as error:
                raise _translate(error, f"bucket {bucket}") from error

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.stat_object(bucket, key)
            return True
        except S3Error as error:
            if error.code in _MISSING:
                return False
            raise _translate(error, key) from error
        except urllib3.exceptions.HTTPError as error:
            raise _translate(error, key) from error

    def size(self, bucket: str, key: str) -> int:
        try:
            return int(self.client.stat_object(bucket, key).size or 0)
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error

    def put_new(
        self,
        bucket: str,
        key: str,
        data: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Writes a new object; an existing key is never replaced."""
        if self.exists(bucket, key):
            log.error("refused to overwrite %s", key)
            raise errors.AlreadyExists("The object already exists and is never overwritten.")
        self.put(bucket, key, data, length, content_type)

    def put(
        self, bucket: str, key: str, data: BinaryIO, length: int, content_type: str
    ) -> None:
        """Writes an object, replacing one at that key: only for keys named by their content
        or by an id that always stands for the same bytes. `length` -1: streamed in parts."""
        try:
            self.client.put_object(
                bucket,
                key,
                data,
                length,
                content_type=content_type,
                part_size=10 * CHUNK_BYTES if length < 0 else 0,
            )
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error

    def put_new_file(self, bucket: str, key: str, path: Path, content_type: str) -> None:
        with open(path, "rb") as data:
            self.put_new(bucket, key, data, path.stat().st_size, content_type)

    def put_record(self, bucket: str, key: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, sort_keys=True).encode()
        try:
            self.client.put_object(
                bucket, key, io.BytesIO(body), len(body), content_type="application/json"
            )
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error

    def get_record(self, bucket: str, key: str) -> dict[str, Any]:
        return json.loads(self.get_bytes(bucket, key))

    def get_versioned_record(self, bucket: str, key: str) -> tuple[dict[str, Any], str]:
        """A record and its version (ETag), for a later `replace_record`."""
        try:
            response = self.client.get_object(bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error
        try:
            body = response.read()
            version = response.headers.get("etag", "").strip('"')
        except urllib3.exceptions.HTTPError as error:
            raise _translate(error, key) from error
        finally:
            response.close()
            response.release_conn()
        return json.loads(body), version

    def replace_record(
        self, bucket: str, key: str, record: dict[str, Any], version: str
    ) -> str | None:
        """Writes the record only if it is still at `version` (the empty version: only if it
        does not exist yet). Returns the new version, or None when another writer came first."""
        body = json.dumps(record, sort_keys=True).encode()
        condition = {"If-Match": f'"{version}"'} if version else {"If-None-Match": "*"}
        try:
            # put_object takes no conditional headers; its one-request form does.
            written = self.client._put_object(
                bucket, key, body, {"Content-Type": "application/json", **condition}
            )
        except S3Error as error:
            if error.code in _CHANGED or (version and error.code == "NoSuchKey"):
                return None
            raise _translate(error, key) from error
        except urllib3.exceptions.HTTPError as error:
            raise _translate(error, key) from error
        return written.etag

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return b"".join(self.iter_chunks(bucket, key))

    def iter_chunks(self, bucket: str, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        try:
            response = self.client.get_object(bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error
        try:
            yield from response.stream(chunk_bytes)
        except urllib3.exceptions.HTTPError as error:
            raise _translate(error, key) from error
        finally:
            response.close()
            response.release_conn()

    def download(self, bucket: str, key: str, path: Path) -> None:
        with open(path, "wb") as out:
            for chunk in self.iter_chunks(bucket, key):
                out.write(chunk)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        return [item.key for item in self.list_objects(bucket, prefix)]

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        try:
            return [
                StoredObject(item.object_name, int(item.size or 0), item.last_modified)
                for item in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if item.object_name and item.last_modified
            ]
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, prefix) from error

    def partial_uploads(self, bucket: str) -> list[PartialUpload]:
        """Multipart uploads left open, e.g. by a process killed mid-write."""
        found: list[PartialUpload] = []
        key_marker, upload_marker = None, None
        try:
            while True:
                # The SDK lists incomplete uploads only through this call.
                page = self.client._list_multipart_uploads(
                    bucket, key_marker=key_marker, upload_id_marker=upload_marker
                )
                found += [
                    PartialUpload(item.object_name, item.upload_id, item.initiated_time)
                    for item in page.uploads
                    if item.object_name and item.upload_id and item.initiated_time
                ]
                if not page.is_truncated:
                    return found
                key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, bucket) from error

    def abort_partial_upload(self, bucket: str, upload: PartialUpload) -> None:
        try:
            self.client._abort_multipart_upload(bucket, upload.key, upload.upload_id)
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, upload.key) from error

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.remove_object(bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error

    def presigned_get(
        self, bucket: str, key: str, ttl: datetime.timedelta, content_type: str
    ) -> str:
        """A download URL that serves the object as `content_type`, whatever it was stored as."""
        return self.public_client.presigned_get_object(
            bucket, key, expires=ttl, response_headers={"response-content-type": content_type}
        )

    def presigned_post(
        self, bucket: str, key: str, content_type: str, max_bytes: int, ttl: datetime.timedelta
    ) -> tuple[str, dict[str, str]]:
        """A browser upload form (S3 POST policy) bound to one key, one content type and at
        most `max_bytes`: the store itself refuses anything else. Returns the URL and the form
        fields to send with the file (the file field last)."""
        policy = PostPolicy(bucket, datetime.datetime.now(datetime.UTC) + ttl)
        policy.add_equals_condition("key", key)
        policy.add_equals_condition("Content-Type", content_type)
        policy.add_content_length_range_condition(1, max_bytes)
        fields = self.public_client.presigned_post_policy(policy)
        return f"{self.public_url}/{bucket}", {"key": key, "Content-Type": content_type, **fields}
