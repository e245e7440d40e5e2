"""Removes from storage what no record owns, once it is older than a grace period.

A process killed mid-write leaves objects behind: the parts of an unfinished multipart write,
an appended chunk whose record was never updated, a form upload never finished, media whose
record was never written. Uploads nobody finishes expire after their lifetime. Every replica
may sweep at once: each step is a delete that is safe to repeat.
"""

import datetime
import logging
import threading

from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.media_library import DONE, MediaLibrary, Upload
from services.shared import errors
from services.shared.storage import ObjectStore

log = logging.getLogger(__name__)


def split_scope(key: str) -> tuple[str, list[str]]:
    """`{tenant}/...` or `{tenant}/people/{id}/...` -> (scope, the rest of the key's parts)."""
    parts = key.split("/")
    if len(parts) > 3 and parts[1] == "people":
        return "/".join(parts[:3]), parts[3:]
    return parts[0], parts[1:]


class Sweeper:
    def __init__(self, media_library: MediaLibrary, settings: OrchestratorSettings) -> None:
        self.media_library = media_library
        self.store: ObjectStore = media_library.store
        self.settings = settings

    def sweep(self) -> int:
        """One pass over every bucket; returns how many objects and partial writes it removed."""
        now = datetime.datetime.now(datetime.UTC)
        grace = datetime.timedelta(seconds=self.settings.sweep_grace_seconds)
        lifetime = datetime.timedelta(seconds=self.settings.upload_lifetime_seconds)
        removed = 0
        for bucket in (self.settings.uploads_bucket, self.settings.results_bucket):
            for partial in self.store.partial_uploads(bucket):
                if now - partial.initiated > grace:
                    self.store.abort_partial_upload(bucket, partial)
                    removed += 1
        records = self.settings.records_bucket
        uploads: dict[str, Upload] = {}
        listed = self.store.list_objects(records)
        for item in listed:
            scope, rest = split_scope(item.key)
            if rest[:1] != ["uploads"] or len(rest) != 2:
                continue
            upload_id = rest[1].removesuffix(".json")
            try:
                upload = Upload.of(self.store.get_record(records, item.key))
            except errors.NotFound:
                continue
            age = now - item.last_modified
            if (upload.state == DONE and age > grace) or age > lifetime:
                self.media_library.expire_upload(scope, upload_id)
                removed += 1
            else:
                uploads[f"{scope}/{upload_id}"] = upload
        media = {item.key.removesuffix(".json") for item in listed if "/media/" in item.key}
        jobs = {item.key.removesuffix(".json") for item in listed if "/jobs/" in item.key}
        for bucket, owned in (
            (self.settings.uploads_bucket, lambda key: self._owns_upload(key, uploads, media)),
            (self.settings.results_bucket, lambda key: self._owns_result(key, media, jobs)),
        ):
            for item in self.store.list_objects(bucket):
                if now - item.last_modified > grace and not owned(item.key):
                    self.store.delete(bucket, item.key)
                    removed += 1
        return removed

    def run_every(self, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds):
            try:
                removed = self.sweep()
            except errors.RemindError as error:
                log.warning("sweep cut short: %s", error)
            else:
                if removed:
                    log.info("sweep removed %d unowned objects", removed)

    @staticmethod
    def _owns_upload(key: str, uploads: dict[str, Upload], media: set[str]) -> bool:
        """Chunks and forms belong to a live upload; finished media to its media record, or
        to its upload while that is being finished (the media takes the upload's id)."""
        scope, rest = split_scope(key)
        if len(rest) < 2:
            return False
        kind, owner_id = rest[0], rest[1]
        live = uploads.get(f"{scope}/{owner_id}")
        if kind in ("parts", "form"):
            return live is not None
        if kind == "media":
            return f"{scope}/media/{owner_id}" in media or live is not None
        return False

    @staticmethod
    def _owns_result(key: str, media: set[str], jobs: set[str]) -> bool:
        """Results belong to their media record; a job's saved work to its job's record."""
        scope, rest = split_scope(key)
        if len(rest) == 3 and rest[1] == "work":
            return f"{scope}/jobs/{rest[0]}" in jobs
        if len(rest) != 2:
            return False
        media_id = rest[1].split(".", 1)[0]
        return f"{scope}/media/{media_id}" in media
