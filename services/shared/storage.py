"""The S3 store, spoken only through the `minio` SDK (SeaweedFS locally, MinIO in production).

Objects are never overwritten in place: `put_new` refuses an existing key, so a result is
always written under a fresh key before anything points at it. Records (small JSON documents
that describe jobs and media) are the one thing replaced, through `put_record`.
"""

import datetime
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
from minio import Minio
from minio.error import S3Error

from services.shared import errors
from services.shared.settings import S3Settings

CHUNK_BYTES = 1024 * 1024
_MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchUpload")


def _translate(error: Exception, what: str) -> errors.RemindError:
    if isinstance(error, S3Error) and error.code in _MISSING:
        return errors.NotFound(f"{what} does not exist")
    if isinstance(error, S3Error):
        return errors.Unavailable(f"storage refused {what}: {error.code}")
    return errors.Unavailable(f"storage is unreachable while accessing {what}")


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
        self.public_client = Minio(
            settings.public_endpoint or settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.public_secure if settings.public_endpoint else settings.secure,
            region=settings.region,
        )

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
            raise errors.AlreadyExists(f"{key} already exists and is never overwritten")
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
        try:
            return [
                item.object_name
                for item in self.client.list_objects(bucket, prefix=prefix, recursive=True)
            ]
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, prefix) from error

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.remove_object(bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError) as error:
            raise _translate(error, key) from error

    def presigned_get(self, bucket: str, key: str, ttl: datetime.timedelta) -> str:
        return self.public_client.presigned_get_object(bucket, key, expires=ttl)

    def presigned_put(self, bucket: str, key: str, ttl: datetime.timedelta) -> str:
        return self.public_client.presigned_put_object(bucket, key, expires=ttl)
