"""Deleting what people gave and got: a job, a media object, or everything of one person.

People's faces and voices are personal data. Deleting removes the bytes from storage, not a
flag: a job's result objects and record, a media object and its record, and for "everything of
mine" every object under the person's scope in every bucket, after their running jobs ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.orchestrator.auth import Owner
from services.orchestrator.jobs import JobBoard
from services.orchestrator.media_library import MediaLibrary
from services.shared import errors


@dataclass(frozen=True)
class Erased:
    objects: int
    jobs: int


class Erasure:
    def __init__(self, board: JobBoard, media_library: MediaLibrary) -> None:
        self.board = board
        self.media_library = media_library

    def delete_job(self, scope: str, name: str) -> None:
        job = self.board.delete(scope, name)
        if job.result.media:
            try:
                self.media_library.delete(scope, job.result.media)
            except errors.NotFound:
                pass  # the result was deleted on its own before

    def delete_media(self, scope: str, name: str) -> None:
        self.media_library.delete(scope, name)

    def delete_everything(self, owner: Owner) -> Erased:
        if not owner.is_person:
            raise errors.FailedPrecondition(
                "An API key acts for its whole tenant: name the person whose data to delete "
                "in x-remind-subject."
            )
        self.board.end_all(owner.scope)
        jobs = self.board.record_count(owner.scope)
        objects = self.media_library.delete_scope(owner.scope)
        return Erased(objects, jobs)
