"""Template frames through a chain of model-service streams, into an encoder: the render
skeleton every job type shares, and the result it stores.

Every stage is a bidirectional stream that returns one response per frame, in order, each
carrying the frame's index and its new image. Stages are chained lazily, so decoding, every
stage and the encoder all work at once on different frames (gRPC's flow control is the
back-pressure between them). When a service goes away mid-stream (UNAVAILABLE: a restart, a
crash), the whole chain restarts from the first frame not yet delivered, as retries.py says;
frames already delivered are never redone, and each one restarts the retry window.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_pb2

from services.orchestrator.jobs import JobContext
from services.orchestrator.media_library import MediaLibrary
from services.orchestrator.retries import RetryPolicy, RetryWindow
from services.orchestrator.template_library import LocalTemplate
from services.shared import errors, images, video, watermark
from services.shared.content_credentials import ContentSigner, Provenance

# A stage takes frames and streams back one response per frame.
Stage = Callable[[Iterator[media_pb2.Frame]], Iterator[Any]]
# Frames from a given index on, encoded; re-reading from a later index skips earlier frames.
FrameSource = Callable[[int], Iterator[media_pb2.Frame]]


# Lossless on the wire: the encoder at the end is the only lossy step.
FRAME_FORMAT = media_pb2.IMAGE_FORMAT_PNG


def template_frames(path: Path) -> FrameSource:
    """The frames of a template file, decoded and encoded as they are asked for."""

    def frames_from(start: int) -> Iterator[media_pb2.Frame]:
        for index, frame in enumerate(video.iter_frames(path)):
            if index >= start:
                image = media_pb2.EncodedImage(
                    data=images.encode_image(frame, "png"), format=FRAME_FORMAT
                )
                yield media_pb2.Frame(index=index, image=image)

    return frames_from


@dataclass
class DeliveredFrame:
    index: int
    image: bytes
    # The response of every stage for this frame, by stage name (per-frame facts).
    responses: dict[str, Any]


def _tap(stage: Stage, name: str, seen: dict[int, dict[str, Any]]) -> Stage:
    """Runs a stage and remembers its responses, then passes their frames on."""

    def tapped(frames: Iterator[media_pb2.Frame]) -> Iterator[media_pb2.Frame]:
        for response in stage(frames):
            seen.setdefault(response.index, {})[name] = response
            yield media_pb2.Frame(index=response.index, image=response.image)

    return tapped


class FramePipeline:
    def __init__(self, stages: dict[str, Stage], retry: RetryPolicy | None = None) -> None:
        self.stages = stages
        self.retry = retry or RetryPolicy()

    def run(self, source: FrameSource, deliver: Callable[[DeliveredFrame], None]) -> int:
        """Delivers every frame, in order, through all stages; returns how many."""
        delivered = 0
        window = RetryWindow(self.retry)
        while True:
            try:
                for frame in self._chain(source(delivered)):
                    deliver(frame)
                    delivered += 1
                    window.progressed()
                return delivered
            except errors.Unavailable as error:
                window.wait(error, f"stream broke at frame {delivered}")

    def _chain(self, frames: Iterator[media_pb2.Frame]) -> Iterator[DeliveredFrame]:
        seen: dict[int, dict[str, Any]] = {}
        stream: Iterator[media_pb2.Frame] = frames
        for name, stage in self.stages.items():
            stream = _tap(stage, name, seen)(stream)
        try:
            for frame in stream:
                yield DeliveredFrame(frame.index, frame.image.data, seen.pop(frame.index, {}))
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()


class ResultStore(Protocol):
    """Where results go: signed, then stored."""

    @property
    def signer(self) -> ContentSigner: ...

    @property
    def media(self) -> MediaLibrary: ...


class FrameWriter(Protocol):
    def write(self, frame: np.ndarray) -> None: ...


@dataclass
class RenderedFrames:
    frames: int = 0
    # Frames where the first stage (the face swap) found a face.
    frames_with_face: int = 0
    engines: dict[str, str] = field(default_factory=dict)  # by stage name


def render(
    context: JobContext,
    template: LocalTemplate,
    pipeline: FramePipeline,
    writer: FrameWriter,
    stage: jobs_pb2.JobStage,
    progress: tuple[float, float],
) -> RenderedFrames:
    """Every template frame through the pipeline, watermarked, into the writer; progress is
    reported as `stage` from progress[0] to progress[1] of the job."""
    start, end = progress
    info = template.info
    total = info.frame_count
    rendered = RenderedFrames()
    context.report(stage, start, 0, total)

    def deliver(frame: DeliveredFrame) -> None:
        image = images.decode_image(frame.image, info.width * info.height)
        writer.write(watermark.embed(image))
        responses = list(frame.responses.values())
        rendered.frames_with_face += bool(responses and responses[0].face_found)
        rendered.engines.update({name: r.engine for name, r in frame.responses.items()})
        done = frame.index + 1
        fraction = start + (end - start) * done / max(total, done)
        context.report(stage, fraction, done, max(total, done))

    rendered.frames = pipeline.run(template_frames(template.path), deliver)
    if rendered.frames == 0:
        raise errors.InvalidInput("The template produced no frames.")
    return rendered


def store_result(
    context: JobContext,
    results: ResultStore,
    encoded: Path,
    content_type: str,
    template: LocalTemplate,
    rendered: RenderedFrames,
    progress: float,
) -> jobs_pb2.JobResult:
    """The encoded file signed with its Content Credentials, stored under a new key of the
    job, and the job's result."""
    context.report(jobs_pb2.JOB_STAGE_STORING, progress, rendered.frames, rendered.frames)
    signed = encoded.with_name(f"signed{encoded.suffix}")
    provenance = Provenance(
        template.record.name, template.content_type(), template.sha256(), rendered.engines
    )
    results.signer.sign(encoded, signed, content_type, provenance)
    stored = results.media.add_result(context.scope, context.job_id, signed, content_type)
    return jobs_pb2.JobResult(
        media=stored.name,
        content_type=stored.content_type,
        size_bytes=stored.size_bytes,
        engines=rendered.engines,
        frames_total=rendered.frames,
        frames_with_face=rendered.frames_with_face,
    )
