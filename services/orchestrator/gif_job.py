"""The GIF track: face photo + GIF template -> swapped GIF, stored as a result.

photo -> identity (at create time) -> template frames -> swapped frames -> GIF -> result.
Decoding, swapping and encoding overlap: frames are decoded as the service asks for them,
and each swapped frame goes into the encoder as soon as it comes back.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from remind.v1 import faceswap_pb2
from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.frame_pipeline import (
    DeliveredFrame,
    FramePipeline,
    RetryPolicy,
    template_frames,
)
from services.orchestrator.jobs import JobContext
from services.orchestrator.media_library import MediaLibrary
from services.orchestrator.model_clients import FaceSwapClient
from services.orchestrator.template_library import TemplateLibrary, TemplateRecord
from services.shared import errors, media, watermark

# Share of the progress bar each stage takes.
PREPARED, SWAPPED = 0.05, 0.95


@dataclass(frozen=True)
class GifJobInput:
    identity: faceswap_pb2.FaceIdentity
    template: TemplateRecord


class GifJobRunner:
    def __init__(
        self,
        media_library: MediaLibrary,
        templates: TemplateLibrary,
        faceswap: FaceSwapClient,
        retry: RetryPolicy,
    ) -> None:
        self.media_library = media_library
        self.templates = templates
        self.faceswap = faceswap
        self.retry = retry

    def run(self, context: JobContext, job_input: GifJobInput) -> jobs_pb2.JobResult:
        with tempfile.TemporaryDirectory(prefix="remind-gif-") as work:
            template_path = Path(work) / "template.gif"
            context.report(jobs_pb2.JOB_STAGE_PREPARING, 0.0)
            self.templates.download(job_input.template, template_path)
            info = media.probe(template_path)
            total = info.frame_count
            context.report(jobs_pb2.JOB_STAGE_SWAPPING_FACES, PREPARED, 0, total)

            result_path = Path(work) / "result.gif"
            facts = {"frames_with_face": 0, "engine": ""}
            pipeline = FramePipeline(
                {"faceswap": lambda frames: self.faceswap.swap_faces(job_input.identity, frames)},
                self.retry,
            )
            with media.GifEncoder(result_path, info.width, info.height, info.fps) as gif:

                def deliver(frame: DeliveredFrame) -> None:
                    swapped = frame.responses["faceswap"]
                    image = media.decode_image(frame.image, info.width * info.height)
                    gif.write(watermark.embed(image))
                    facts["frames_with_face"] += swapped.face_found
                    facts["engine"] = swapped.engine
                    done = frame.index + 1
                    fraction = PREPARED + (SWAPPED - PREPARED) * done / max(total, done)
                    context.report(
                        jobs_pb2.JOB_STAGE_SWAPPING_FACES, fraction, done, max(total, done)
                    )

                done = pipeline.run(template_frames(template_path), deliver)
            if done == 0:
                raise errors.InvalidInput("The template produced no frames.")

            context.report(jobs_pb2.JOB_STAGE_STORING, SWAPPED, done, done)
            result = self.media_library.add_result(
                context.tenant, context.job_id, result_path, "image/gif"
            )
        return jobs_pb2.JobResult(
            media=result.name,
            content_type=result.content_type,
            size_bytes=result.size_bytes,
            engines={"faceswap": facts["engine"]},
            frames_total=done,
            frames_with_face=facts["frames_with_face"],
        )
