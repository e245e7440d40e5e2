"""What a job type is: admission, which runs inside the Create call and refuses bad input
before anything is queued, and the work any replica's worker runs later, from the spec and the
saved work admission left (a job may run more than once: see jobs.py). One job type, one module
(gif_job.py, video_job.py); the servicer holds them in a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from remind.v1 import faceswap_pb2, media_pb2
from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.auth import Owner
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.jobs import JobContext
from services.orchestrator.media_library import MediaLibrary
from services.orchestrator.model_clients import FaceSwapClient, LipSyncClient, VoiceClient
from services.orchestrator.retries import RetryPolicy
from services.orchestrator.template_library import TemplateLibrary
from services.shared import errors
from services.shared.content_credentials import ContentSigner


@dataclass(frozen=True)
class JobServices:
    """Everything a job type may use: the libraries, the model services and the settings."""

    media: MediaLibrary
    templates: TemplateLibrary
    faceswap: FaceSwapClient
    lipsync: LipSyncClient
    voice: VoiceClient
    retry: RetryPolicy
    signer: ContentSigner
    settings: OrchestratorSettings

    def check_consent(self, consent: bool) -> None:
        """Refuses a job without the caller's consent, when the settings require it."""
        if self.settings.require_consent and not consent:
            raise errors.FailedPrecondition(
                "Consent is required: set consent to confirm that the face (and the voice) are "
                "your own, or that you have the person's consent to use them."
            )

    def prepare_identity(
        self, scope: str, face_media: str, engine: str, face_choice: media_pb2.FaceChoice
    ) -> faceswap_pb2.FaceIdentity:
        """The named face of an uploaded photo, else its main face, ready for the faceswap
        streams; refuses a photo without a usable face or with no clear main face
        (FAILED_PRECONDITION), or a choice that matches no face (INVALID_ARGUMENT), before any
        work is queued."""
        return self.faceswap.prepare_identity(self._photo(scope, face_media), engine, face_choice)

    def detect_faces(
        self, scope: str, face_media: str, engine: str
    ) -> list[media_pb2.DetectedFace]:
        """The faces of an uploaded photo as the engine finds them, numbered as a job's
        face_choice.index names them."""
        return self.faceswap.find_faces(self._photo(scope, face_media), engine)

    def _photo(self, scope: str, face_media: str) -> bytes:
        record = self.media.get(scope, face_media)
        return self.media.read_bytes(record, self.settings.max_upload_bytes)


# The identity admission prepared, as the job saves it.
IDENTITY = "identity.pb"


@dataclass(frozen=True)
class AdmittedJob:
    job: jobs_pb2.Job  # its kind and inputs; the board fills in the rest
    spec: dict[str, Any]  # what its work needs to know (JSON), kept in the job's record
    work: dict[str, bytes]  # work done at admission, saved for the job (see JobContext.saved)


class JobType(Protocol):
    def admit(self, owner: Owner, request: Any) -> AdmittedJob:
        """Checks a Create request and prepares what the job needs; raises domain errors."""
        ...

    def run(self, context: JobContext) -> jobs_pb2.JobResult:
        """The job's work, from `context.spec` and its saved work."""
        ...


def saved_identity(context: JobContext) -> faceswap_pb2.FaceIdentity:
    data = context.saved(IDENTITY)
    if data is None:
        raise errors.FailedPrecondition(
            "The job's prepared face is gone (its data was deleted); submit the job again."
        )
    return faceswap_pb2.FaceIdentity.FromString(data)
