"""A Python client for the public API, used by the CLI and the tests."""

import collections
import mimetypes
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from remind.v1 import account_service_pb2 as account_pb2
from remind.v1 import account_service_pb2_grpc as account_grpc
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import job_service_pb2_grpc as jobs_grpc
from remind.v1 import media_pb2 as shared_media_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import media_service_pb2_grpc as media_grpc
from remind.v1 import template_service_pb2 as templates_pb2
from remind.v1 import template_service_pb2_grpc as templates_grpc

UPLOAD_CHUNK_BYTES = 256 * 1024


class _Credentials(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the caller's credentials to every call: a person's token, or a server's API key
    (and, optionally, the person it acts for)."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers

    def _with_key(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self.headers],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_key(details), requests)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", "method timeout metadata credentials wait_for_ready compression"
    ),
    grpc.ClientCallDetails,
):
    pass


class RemindClient:
    """`api_key`: a server's key (`subject`: the person it acts for); `token`: a person's."""

    def __init__(self, address: str, api_key: str = "", token: str = "", subject: str = "") -> None:
        self.channel = grpc.insecure_channel(address)
        headers = [("x-api-key", api_key)] if api_key else []
        headers += [("authorization", f"Bearer {token}")] if token else []
        headers += [("x-remind-subject", subject)] if subject else []
        if headers:
            self.channel = grpc.intercept_channel(self.channel, _Credentials(headers))
        self.jobs = jobs_grpc.JobServiceStub(self.channel)
        self.templates = templates_grpc.TemplateServiceStub(self.channel)
        self.media = media_grpc.MediaServiceStub(self.channel)
        self.account = account_grpc.AccountServiceStub(self.channel)

    def __enter__(self) -> "RemindClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.channel.close()

    def upload(
        self,
        data: bytes,
        filename: str,
        content_type: str = "",
        progress: Callable[[int], None] | None = None,
    ) -> media_pb2.Media:
        """Uploads through the client stream; `progress` is told the bytes sent so far."""
        content_type = content_type or mimetypes.guess_type(filename)[0] or ""

        def requests() -> Iterator[media_pb2.UploadMediaRequest]:
            yield media_pb2.UploadMediaRequest(
                metadata=media_pb2.UploadMediaMetadata(content_type=content_type, filename=filename)
            )
            for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
                chunk = data[start : start + UPLOAD_CHUNK_BYTES]
                yield media_pb2.UploadMediaRequest(chunk=chunk)
                if progress:
                    progress(start + len(chunk))

        return self.media.UploadMedia(requests(), timeout=120).media

    def upload_file(self, path: Path) -> media_pb2.Media:
        return self.upload(path.read_bytes(), path.name)

    def create_gif_job(
        self,
        face_media: str,
        template: str,
        engine: str = "",
        face_choice: shared_media_pb2.FaceChoice | None = None,
        consent: bool = False,
    ) -> jobs_pb2.Job:
        return self.jobs.CreateGifJob(
            jobs_pb2.CreateGifJobRequest(
                face_media=face_media,
                template=template,
                faceswap_engine=engine,
                face_choice=face_choice,
                consent=consent,
            ),
            timeout=120,
        ).job

    def create_video_job(
        self,
        face_media: str,
        voice_media: str,
        template: str,
        engine: str = "",
        face_choice: shared_media_pb2.FaceChoice | None = None,
        consent: bool = False,
    ) -> jobs_pb2.Job:
        return self.jobs.CreateVideoJob(
            jobs_pb2.CreateVideoJobRequest(
                face_media=face_media,
                voice_media=voice_media,
                template=template,
                faceswap_engine=engine,
                lipsync_engine=engine if engine != "auto" else "",
                face_choice=face_choice,
                consent=consent,
            ),
            timeout=120,
        ).job

    def detect_faces(
        self, media_name: str, engine: str = ""
    ) -> list[shared_media_pb2.DetectedFace]:
        request = media_pb2.DetectFacesRequest(name=media_name, faceswap_engine=engine)
        return list(self.media.DetectFaces(request, timeout=60).faces)

    def watch(self, job_name: str, timeout: float = 1800) -> Iterator[jobs_pb2.Job]:
        for response in self.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(name=job_name), timeout=timeout
        ):
            yield response.job

    def get_job(self, job_name: str) -> jobs_pb2.Job:
        return self.jobs.GetJob(jobs_pb2.GetJobRequest(name=job_name), timeout=30).job

    def download(self, media_name: str) -> bytes:
        responses = self.media.DownloadMedia(
            media_pb2.DownloadMediaRequest(name=media_name), timeout=300
        )
        return b"".join(response.chunk for response in responses)

    def delete_my_data(self) -> account_pb2.DeleteMyDataResponse:
        return self.account.DeleteMyData(account_pb2.DeleteMyDataRequest(), timeout=300)

    def verify(self, media_name: str) -> media_pb2.VerifyMediaResponse:
        request = media_pb2.VerifyMediaRequest(name=media_name)
        return self.media.VerifyMedia(request, timeout=120)

    def list_templates(
        self, kind: templates_pb2.TemplateKind = templates_pb2.TEMPLATE_KIND_UNSPECIFIED
    ) -> list[templates_pb2.Template]:
        return list(
            self.templates.ListTemplates(
                templates_pb2.ListTemplatesRequest(kind=kind), timeout=30
            ).templates
        )

    def create_template(
        self, media: str, template_id: str, display_name: str = ""
    ) -> templates_pb2.Template:
        request = templates_pb2.CreateTemplateRequest(
            media=media, template_id=template_id, display_name=display_name
        )
        return self.templates.CreateTemplate(request, timeout=300).template

    def delete_template(self, name: str) -> None:
        self.templates.DeleteTemplate(templates_pb2.DeleteTemplateRequest(name=name), timeout=30)

    def delete_media(self, name: str) -> None:
        self.media.DeleteMedia(media_pb2.DeleteMediaRequest(name=name), timeout=30)

    def list_jobs(self, page_size: int = 20) -> list[jobs_pb2.Job]:
        return list(
            self.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=page_size), timeout=30).jobs
        )
