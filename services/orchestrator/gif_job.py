"""The GIF track: face photo + GIF template -> swapped GIF, stored as a result.

photo -> identity (at admission, saved with the job) -> template frames -> swapped frames ->
GIF -> result.
Decoding, swapping and encoding overlap: frames are decoded as the service asks for them,
and each swapped frame goes into the encoder as soon as it comes back.
"""

import tempfile
from dataclasses import asdict
from pathlib import Path

from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.auth import Owner
from services.orchestrator.frame_pipeline import FramePipeline, render, store_result
from services.orchestrator.job_types import IDENTITY, AdmittedJob, JobServices, saved_identity
from services.orchestrator.jobs import JobContext
from services.orchestrator.template_library import GIF, TemplateRecord
from services.shared import video, wire

# Share of the progress bar each stage ends at.
PREPARED, SWAPPED = 0.05, 0.95


class GifJob:
    def __init__(self, services: JobServices) -> None:
        self.services = services

    def admit(self, owner: Owner, request: jobs_pb2.CreateGifJobRequest) -> AdmittedJob:
        services = self.services
        services.check_consent(request.consent)
        wire.require(bool(request.face_media), "face_media is required: upload the photo first.")
        wire.require(bool(request.template), "template is required, e.g. templates/astronaut-sway.")
        template = services.templates.get(owner, request.template, kind=GIF)
        identity = services.prepare_identity(
            owner.scope, request.face_media, request.faceswap_engine, request.face_choice
        )
        job = jobs_pb2.Job(
            kind=jobs_pb2.JOB_KIND_GIF,
            face_media=request.face_media,
            template=template.name,
            consent=request.consent,
        )
        spec = {"template": asdict(template)}
        return AdmittedJob(job, spec, {IDENTITY: identity.SerializeToString()})

    def run(self, context: JobContext) -> jobs_pb2.JobResult:
        services = self.services
        template = TemplateRecord(**context.spec["template"])
        identity = saved_identity(context)
        with tempfile.TemporaryDirectory(prefix="remind-gif-") as work:
            context.report(jobs_pb2.JOB_STAGE_PREPARING, 0.0)
            local = services.templates.local_copy(template, Path(work))
            info = local.info
            pipeline = FramePipeline(
                {"faceswap": lambda frames: services.faceswap.swap_faces(identity, frames)},
                services.retry,
            )
            result_path = Path(work) / "result.gif"
            with video.GifEncoder(
                result_path, info.width, info.height, info.fps, info.frame_count
            ) as gif:
                rendered = render(
                    context,
                    local,
                    pipeline,
                    gif,
                    jobs_pb2.JOB_STAGE_SWAPPING_FACES,
                    (PREPARED, SWAPPED),
                )
            return store_result(
                context, services, result_path, "image/gif", local, rendered, SWAPPED
            )
