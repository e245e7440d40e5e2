"""What a job type is: admission, which runs inside the Create call and refuses bad input
before anything is queued, and the work a pool thread runs later. One job type, one module
(gif_job.py, video_job.py); the servicer holds them in a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from remind.v1 import faceswap_pb2
from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.auth import Owner
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.jobs import JobWork
from services.orchestrator.media_library import MediaLibrary
from services.orchestrator.model_clients import FaceSwapClient, LipSyncClient, VoiceClient
from services.orchestrator.retries import RetryPolicy
from services.orchestrator.template_library import TemplateLibrary
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

    def prepare_identity(
        self, scope: str, face_media: str, engine: str
    ) -> faceswap_pb2.FaceIdentity:
        """The face in an uploaded photo, ready for the faceswap streams; refuses a photo
        without a usable face (FAILED_PRECONDITION) before any work is queued."""
        record = self.media.get(scope, face_media)
        photo = self.media.read_bytes(record, self.settings.max_upload_bytes)
        return self.faceswap.prepare_identity(photo, engine)


@dataclass(frozen=True)
class AdmittedJob:
    job: jobs_pb2.Job  # its kind and inputs; the board fills in the rest
    work: JobWork


class JobType(Protocol):
    def admit(self, owner: Owner, request: Any) -> AdmittedJob:
        """Checks a Create request and prepares what the job needs; raises domain errors."""
        ...
