"""The public API's servicers: protobuf in, library calls, protobuf out."""

import datetime
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from remind.v1 import account_service_pb2 as account_pb2
from remind.v1 import account_service_pb2_grpc as account_grpc
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import job_service_pb2_grpc as jobs_grpc
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import media_service_pb2_grpc as media_grpc
from remind.v1 import template_service_pb2 as templates_pb2
from remind.v1 import template_service_pb2_grpc as templates_grpc

from services.orchestrator.auth import current_owner
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.erasure import Erasure
from services.orchestrator.job_types import JobServices, JobType
from services.orchestrator.jobs import JobBoard
from services.orchestrator.media_library import MediaLibrary, MediaRecord
from services.orchestrator.template_library import GIF, VIDEO, TemplateLibrary, TemplateRecord
from services.shared import errors, wire
from services.shared.provenance import MediaVerdict, verify_media
from services.shared.streams import with_idle_timeout

KIND_NAMES = {templates_pb2.TEMPLATE_KIND_GIF: GIF, templates_pb2.TEMPLATE_KIND_VIDEO: VIDEO}
KIND_VALUES = {name: value for value, name in KIND_NAMES.items()}


def _timestamp(value: datetime.datetime | str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    stamp.FromDatetime(value)
    return stamp


def media_to_proto(record: MediaRecord) -> media_pb2.Media:
    return media_pb2.Media(
        name=record.name,
        content_type=record.content_type,
        size_bytes=record.size_bytes,
        sha256=record.sha256,
        filename=record.filename,
        create_time=_timestamp(record.create_time),
    )


def template_to_proto(record: TemplateRecord) -> templates_pb2.Template:
    return templates_pb2.Template(
        name=record.name,
        display_name=record.display_name,
        kind=KIND_VALUES[record.kind],
        duration_seconds=record.duration_seconds,
        width=record.width,
        height=record.height,
        frame_count=record.frame_count,
        fps=record.fps,
        builtin=record.builtin,
    )


class JobServicer(jobs_grpc.JobServiceServicer):
    """Create calls admit a job through its type in `job_types`, then queue it on the board."""

    def __init__(
        self,
        board: JobBoard,
        media_library: MediaLibrary,
        job_types: dict[int, JobType],
        erasure: Erasure,
    ) -> None:
        self.board = board
        self.media_library = media_library
        self.job_types = job_types
        self.erasure = erasure

    def _with_url(self, scope: str, job: jobs_pb2.Job) -> jobs_pb2.Job:
        if job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.result.media:
            try:
                result = self.media_library.get(scope, job.result.media)
            except errors.NotFound:
                return job  # the person deleted the result and kept the job
            job.result.download_url, _ = self.media_library.url(result)
        return job

    def _create(self, kind: int, request: Any) -> jobs_pb2.Job:
        owner = current_owner()
        admitted = self.job_types[kind].admit(owner, request)
        return self.board.submit(owner.scope, admitted.job, admitted.spec, admitted.work)

    def CreateGifJob(
        self, request: jobs_pb2.CreateGifJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.CreateGifJobResponse:
        return jobs_pb2.CreateGifJobResponse(job=self._create(jobs_pb2.JOB_KIND_GIF, request))

    def CreateVideoJob(
        self, request: jobs_pb2.CreateVideoJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.CreateVideoJobResponse:
        return jobs_pb2.CreateVideoJobResponse(job=self._create(jobs_pb2.JOB_KIND_VIDEO, request))

    def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        scope = current_owner().scope
        return jobs_pb2.GetJobResponse(
            job=self._with_url(scope, self.board.get(scope, request.name))
        )

    def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[jobs_pb2.WatchJobResponse]:
        scope = current_owner().scope
        for job in self.board.watch(scope, request.name, context.is_active):
            yield jobs_pb2.WatchJobResponse(job=self._with_url(scope, job))

    def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        scope = current_owner().scope
        return jobs_pb2.CancelJobResponse(job=self.board.cancel(scope, request.name))

    def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        scope = current_owner().scope
        jobs, next_token = self.board.list(scope, request.page_size, request.page_token)
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=next_token)

    def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.DeleteJobResponse:
        self.erasure.delete_job(current_owner().scope, request.name)
        return jobs_pb2.DeleteJobResponse()


class TemplateServicer(templates_grpc.TemplateServiceServicer):
    def __init__(self, templates: TemplateLibrary) -> None:
        self.templates = templates

    def ListTemplates(
        self, request: templates_pb2.ListTemplatesRequest, context: grpc.ServicerContext
    ) -> templates_pb2.ListTemplatesResponse:
        records = self.templates.list(current_owner(), KIND_NAMES.get(request.kind))
        return templates_pb2.ListTemplatesResponse(
            templates=[template_to_proto(record) for record in records]
        )

    def GetTemplate(
        self, request: templates_pb2.GetTemplateRequest, context: grpc.ServicerContext
    ) -> templates_pb2.GetTemplateResponse:
        record = self.templates.get(current_owner(), request.name)
        return templates_pb2.GetTemplateResponse(template=template_to_proto(record))

    def CreateTemplate(
        self, request: templates_pb2.CreateTemplateRequest, context: grpc.ServicerContext
    ) -> templates_pb2.CreateTemplateResponse:
        record = self.templates.create(
            current_owner(), request.media, request.template_id, request.display_name
        )
        return templates_pb2.CreateTemplateResponse(template=template_to_proto(record))

    def DeleteTemplate(
        self, request: templates_pb2.DeleteTemplateRequest, context: grpc.ServicerContext
    ) -> templates_pb2.DeleteTemplateResponse:
        self.templates.delete(current_owner(), request.name)
        return templates_pb2.DeleteTemplateResponse()


class MediaServicer(media_grpc.MediaServiceServicer):
    def __init__(
        self,
        media_library: MediaLibrary,
        settings: OrchestratorSettings,
        trust_anchors: str,
        erasure: Erasure,
        job_services: JobServices,
    ) -> None:
        self.media_library = media_library
        self.settings = settings
        self.trust_anchors = trust_anchors
        self.erasure = erasure
        self.job_services = job_services

    def DeleteMedia(
        self, request: media_pb2.DeleteMediaRequest, context: grpc.ServicerContext
    ) -> media_pb2.DeleteMediaResponse:
        self.erasure.delete_media(current_owner().scope, request.name)
        return media_pb2.DeleteMediaResponse()

    def CreateUpload(
        self, request: media_pb2.CreateUploadRequest, context: grpc.ServicerContext
    ) -> media_pb2.CreateUploadResponse:
        upload, form = self.media_library.create_upload(
            current_owner().scope, request.content_type, request.filename, request.size_bytes
        )
        return media_pb2.CreateUploadResponse(
            upload=upload,
            max_chunk_bytes=self.settings.max_chunk_bytes,
            form=media_pb2.UploadForm(
                url=form.url, fields=form.fields, expire_time=_timestamp(form.expire_time)
            ),
        )

    def AppendUpload(
        self, request: media_pb2.AppendUploadRequest, context: grpc.ServicerContext
    ) -> media_pb2.AppendUploadResponse:
        received = self.media_library.append_upload(
            current_owner().scope, request.upload, request.offset, request.data
        )
        return media_pb2.AppendUploadResponse(received_bytes=received)

    def FinishUpload(
        self, request: media_pb2.FinishUploadRequest, context: grpc.ServicerContext
    ) -> media_pb2.FinishUploadResponse:
        record = self.media_library.finish_upload(current_owner().scope, request.upload)
        return media_pb2.FinishUploadResponse(media=media_to_proto(record))

    def UploadMedia(
        self,
        request_iterator: Iterator[media_pb2.UploadMediaRequest],
        context: grpc.ServicerContext,
    ) -> media_pb2.UploadMediaResponse:
        # A stalled upload would otherwise hold its thread and stream place until it closes.
        requests = with_idle_timeout(
            request_iterator, self.settings.request_idle_timeout_seconds, "UploadMedia"
        )
        metadata = wire.first_message(
            requests, "metadata", "The first UploadMedia message must be the metadata."
        )

        def chunks() -> Iterator[bytes]:
            for request in requests:
                wire.require(request.HasField("chunk"), "Only chunks may follow the metadata.")
                yield request.chunk

        record = self.media_library.upload_stream(
            current_owner().scope, metadata.content_type, metadata.filename, chunks()
        )
        return media_pb2.UploadMediaResponse(media=media_to_proto(record))

    def GetMedia(
        self, request: media_pb2.GetMediaRequest, context: grpc.ServicerContext
    ) -> media_pb2.GetMediaResponse:
        record = self.media_library.get(current_owner().scope, request.name)
        return media_pb2.GetMediaResponse(media=media_to_proto(record))

    def DownloadMedia(
        self, request: media_pb2.DownloadMediaRequest, context: grpc.ServicerContext
    ) -> Iterator[media_pb2.DownloadMediaResponse]:
        record = self.media_library.get(current_owner().scope, request.name)
        # The media's description comes with the first chunk only.
        metadata: media_pb2.Media | None = media_to_proto(record)
        for chunk in self.media_library.read_chunks(record):
            yield media_pb2.DownloadMediaResponse(media=metadata, chunk=chunk)
            metadata = None

    def GetMediaUrl(
        self, request: media_pb2.GetMediaUrlRequest, context: grpc.ServicerContext
    ) -> media_pb2.GetMediaUrlResponse:
        record = self.media_library.get(current_owner().scope, request.name)
        url, expires = self.media_library.url(record)
        return media_pb2.GetMediaUrlResponse(url=url, expire_time=_timestamp(expires))

    def VerifyMedia(
        self, request: media_pb2.VerifyMediaRequest, context: grpc.ServicerContext
    ) -> media_pb2.VerifyMediaResponse:
        record = self.media_library.get(current_owner().scope, request.name)
        with tempfile.TemporaryDirectory(prefix="remind-verify-") as work:
            path = Path(work) / "media"
            self.media_library.download(record, path)
            verdict = verify_media(path, self.trust_anchors)
        return verdict_to_proto(verdict)

    def DetectFaces(
        self, request: media_pb2.DetectFacesRequest, context: grpc.ServicerContext
    ) -> media_pb2.DetectFacesResponse:
        faces = self.job_services.detect_faces(
            current_owner().scope, request.name, request.faceswap_engine
        )
        return media_pb2.DetectFacesResponse(faces=faces)


class AccountServicer(account_grpc.AccountServiceServicer):
    def __init__(self, erasure: Erasure) -> None:
        self.erasure = erasure

    def DeleteMyData(
        self, request: account_pb2.DeleteMyDataRequest, context: grpc.ServicerContext
    ) -> account_pb2.DeleteMyDataResponse:
        erased = self.erasure.delete_everything(current_owner())
        return account_pb2.DeleteMyDataResponse(
            objects_deleted=erased.objects, jobs_deleted=erased.jobs
        )


def verdict_to_proto(verdict: MediaVerdict) -> media_pb2.VerifyMediaResponse:
    credentials = verdict.credentials
    return media_pb2.VerifyMediaResponse(
        credentials=media_pb2.ContentCredentials(
            state=f"CREDENTIALS_STATE_{credentials.state}",
            trusted=credentials.trusted,
            signer=credentials.signer,
            issuer=credentials.issuer,
            generator=credentials.generator,
            actions=credentials.actions,
            digital_source_type=credentials.digital_source_type,
            problems=credentials.problems,
        ),
        watermark=media_pb2.WatermarkCheck(
            found=verdict.watermark.watermarked,
            score=verdict.watermark.score,
            frames=verdict.watermark.frames,
        ),
    )
