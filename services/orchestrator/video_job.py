"""The MP4 track: face photo + voice recording + MP4 template -> a lip-synced MP4 result.

photo -> identity (at create time) -> voice recording -> vocals -> audio features ->
template frames -> swapped frames -> lip-synced frames -> H.264 + AAC -> result.
Voice extraction must finish before lip sync starts (the features need the whole voice); then
decoding, face swap, lip sync and encoding all run at once on different frames.

The result is as long as the template. A shorter voice is followed by silence (the mouth
rests); a longer one is cut at the template's end.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from remind.v1 import faceswap_pb2, lipsync_pb2
from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.frame_pipeline import (
    DeliveredFrame,
    FramePipeline,
    RetryPolicy,
    template_frames,
)
from services.orchestrator.jobs import JobContext
from services.orchestrator.media_library import MediaLibrary, MediaRecord
from services.orchestrator.model_clients import (
    FaceSwapClient,
    LipSyncClient,
    VoiceClient,
    pcm_to_wav,
)
from services.orchestrator.template_library import TemplateLibrary, TemplateRecord
from services.shared import errors, media, watermark

# Share of the progress bar each stage ends at.
PREPARED, VOICE_EXTRACTED, FRAMES_DONE, ENCODED = 0.03, 0.2, 0.95, 0.97
SYNTHETIC_MEDIA_TAG = "synthetic media: face and voice made by Re:Mind"
# The voice service's stems: PCM s16le, 44.1 kHz stereo (voice.proto, StemChunk).
VOCALS_RATE, VOCALS_FRAME_BYTES = 44100, 4


@dataclass(frozen=True)
class VideoJobInput:
    identity: faceswap_pb2.FaceIdentity
    voice: MediaRecord
    template: TemplateRecord
    voice_engine: str
    lipsync_engine: str


class VideoJobRunner:
    def __init__(
        self,
        media_library: MediaLibrary,
        templates: TemplateLibrary,
        faceswap: FaceSwapClient,
        lipsync: LipSyncClient,
        voice: VoiceClient,
        retry: RetryPolicy,
        max_voice_bytes: int,
    ) -> None:
        self.media_library = media_library
        self.templates = templates
        self.faceswap = faceswap
        self.lipsync = lipsync
        self.voice = voice
        self.retry = retry
        self.max_voice_bytes = max_voice_bytes

    def run(self, context: JobContext, job_input: VideoJobInput) -> jobs_pb2.JobResult:
        with tempfile.TemporaryDirectory(prefix="remind-video-") as work:
            context.report(jobs_pb2.JOB_STAGE_PREPARING, 0.0)
            template_path = Path(work) / "template.mp4"
            self.templates.download(job_input.template, template_path)
            info = media.probe(template_path)

            vocals_wav = Path(work) / "vocals.wav"
            vocals, voice_engine = self._extract_voice(context, job_input, info.duration_seconds)
            vocals_wav.write_bytes(vocals)
            features = self.lipsync.prepare_audio(vocals_wav.read_bytes(), job_input.lipsync_engine)

            result_path = Path(work) / "result.mp4"
            facts = self._render(
                context, job_input, features, template_path, info, vocals_wav, result_path
            )
            facts["voice"] = voice_engine
            context.report(jobs_pb2.JOB_STAGE_STORING, ENCODED, facts["frames"], facts["frames"])
            result = self.media_library.add_result(
                context.tenant, context.job_id, result_path, "video/mp4"
            )
        return jobs_pb2.JobResult(
            media=result.name,
            content_type=result.content_type,
            size_bytes=result.size_bytes,
            engines={
                "faceswap": facts["faceswap"],
                "lipsync": facts["lipsync"],
                "voice": facts["voice"],
            },
            frames_total=facts["frames"],
            frames_with_face=facts["frames_with_face"],
        )

    def _extract_voice(
        self, context: JobContext, job_input: VideoJobInput, template_seconds: float
    ) -> tuple[bytes, str]:
        """The vocals, cut at the template's end, as a WAV file's bytes, and the engine that
        separated them."""
        context.report(jobs_pb2.JOB_STAGE_EXTRACTING_VOICE, PREPARED)
        recording = self.media_library.read_bytes(job_input.voice, self.max_voice_bytes)

        def progress(fraction: float) -> None:
            context.report(
                jobs_pb2.JOB_STAGE_EXTRACTING_VOICE,
                PREPARED + (VOICE_EXTRACTED - PREPARED) * fraction,
            )

        vocals, summary = self.voice.extract_voice(recording, job_input.voice_engine, progress)
        if not summary.voice_found:
            raise errors.FailedPrecondition(
                "No speech was found in the voice recording; record a few sentences and try again."
            )
        # Voice past the template's end is never heard; cutting it here also keeps a long
        # recording within what the lipsync service accepts.
        kept_bytes = int(template_seconds * VOCALS_RATE) * VOCALS_FRAME_BYTES
        return pcm_to_wav(vocals[:kept_bytes], VOCALS_RATE), summary.engine

    def _render(
        self,
        context: JobContext,
        job_input: VideoJobInput,
        features: lipsync_pb2.AudioFeatures,
        template_path: Path,
        info: media.MediaInfo,
        vocals_wav: Path,
        result_path: Path,
    ) -> dict:
        total = info.frame_count
        facts = {"frames": 0, "frames_with_face": 0, "faceswap": "", "lipsync": ""}
        pipeline = FramePipeline(
            {
                "faceswap": lambda frames: self.faceswap.swap_faces(job_input.identity, frames),
                "lipsync": lambda frames: self.lipsync.sync_lips(features, info.fps, frames),
            },
            self.retry,
        )
        context.report(jobs_pb2.JOB_STAGE_SYNCING_LIPS, VOICE_EXTRACTED, 0, total)
        with media.Mp4Encoder(
            result_path, info.width, info.height, info.fps, vocals_wav, SYNTHETIC_MEDIA_TAG
        ) as video:

            def deliver(frame: DeliveredFrame) -> None:
                swapped, synced = frame.responses["faceswap"], frame.responses["lipsync"]
                image = media.decode_image(frame.image, info.width * info.height)
                video.write(watermark.embed(image))
                facts["frames_with_face"] += swapped.face_found
                facts["faceswap"], facts["lipsync"] = swapped.engine, synced.engine
                done = frame.index + 1
                fraction = VOICE_EXTRACTED + (FRAMES_DONE - VOICE_EXTRACTED) * done / max(
                    total, done
                )
                context.report(jobs_pb2.JOB_STAGE_SYNCING_LIPS, fraction, done, max(total, done))

            facts["frames"] = pipeline.run(template_frames(template_path), deliver)
            context.report(
                jobs_pb2.JOB_STAGE_ENCODING, FRAMES_DONE, facts["frames"], facts["frames"]
            )
        return facts
