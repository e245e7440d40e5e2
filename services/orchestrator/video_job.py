"""The MP4 track: face photo + voice recording + MP4 template -> a lip-synced MP4 result.

photo -> identity (at admission) -> stored recording -> vocals -> audio features ->
template frames -> swapped frames -> lip-synced frames -> H.264 + AAC -> result.
The identity, the vocals and the features are saved with the job as each is made: a job run
again after its worker died starts at the frames.
The voice service reads the recording from the store itself and separates only as much of it
as the template lasts; its vocals stream back as PCM into a local WAV file, which feeds the
lipsync features and the MP4's sound. Voice extraction
must finish before lip sync starts (the features need the whole voice); then decoding, face
swap, lip sync and encoding all run at once on different frames.

The result is as long as the template. A shorter voice is followed by silence (the mouth
rests); a longer one is cut at the template's end.
"""

import tempfile
import wave
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import lipsync_pb2, media_pb2

from services.orchestrator.auth import Owner
from services.orchestrator.frame_pipeline import FramePipeline, render, store_result
from services.orchestrator.job_types import IDENTITY, AdmittedJob, JobServices, saved_identity
from services.orchestrator.jobs import JobContext
from services.orchestrator.media_library import MediaRecord
from services.orchestrator.template_library import VIDEO, TemplateRecord
from services.shared import errors, video, wire

# Share of the progress bar each stage ends at.
PREPARED, VOICE_EXTRACTED, FRAMES_DONE, ENCODED = 0.03, 0.2, 0.95, 0.97
# Vocals go to the lipsync service in chunks well under gRPC's message limit.
AUDIO_CHUNK_FRAMES = 64 * 1024
# The work a job saves as it goes.
VOCALS, VOICE_ENGINE, FEATURES = "vocals.wav", "voice-engine.txt", "features.pb"


class VideoJob:
    def __init__(self, services: JobServices) -> None:
        self.services = services

    def admit(self, owner: Owner, request: jobs_pb2.CreateVideoJobRequest) -> AdmittedJob:
        services = self.services
        services.check_consent(request.consent)
        wire.require(bool(request.face_media), "face_media is required: upload the photo first.")
        wire.require(bool(request.voice_media), "voice_media is required: upload a recording.")
        wire.require(bool(request.template), "template is required, e.g. templates/astronaut-talk.")
        template = services.templates.get(owner, request.template, kind=VIDEO)
        voice = services.media.get(owner.scope, request.voice_media)
        # These checks refuse a bad engine, recording or photo before any work is queued.
        services.voice.check_engine(request.voice_engine)
        services.lipsync.check_engine(request.lipsync_engine)
        services.voice.probe_audio(voice.storage_object())
        identity = services.prepare_identity(
            owner.scope, request.face_media, request.faceswap_engine, request.face_choice
        )
        job = jobs_pb2.Job(
            kind=jobs_pb2.JOB_KIND_VIDEO,
            face_media=request.face_media,
            voice_media=request.voice_media,
            template=template.name,
            consent=request.consent,
        )
        spec = {
            "template": asdict(template),
            "voice": asdict(voice),
            "voice_engine": request.voice_engine,
            "lipsync_engine": request.lipsync_engine,
        }
        return AdmittedJob(job, spec, {IDENTITY: identity.SerializeToString()})

    def run(self, context: JobContext) -> jobs_pb2.JobResult:
        services = self.services
        template = TemplateRecord(**context.spec["template"])
        with tempfile.TemporaryDirectory(prefix="remind-video-") as work:
            context.report(jobs_pb2.JOB_STAGE_PREPARING, 0.0)
            local = services.templates.local_copy(template, Path(work))
            info = local.info

            vocals = VocalsFile(Path(work) / VOCALS, info.duration_seconds)
            voice_engine = self._vocals(context, vocals)
            features = self._features(context, vocals)
            identity, fps = saved_identity(context), info.fps
            pipeline = FramePipeline(
                {
                    "faceswap": lambda frames: services.faceswap.swap_faces(identity, frames),
                    "lipsync": lambda frames: services.lipsync.sync_lips(features, fps, frames),
                },
                services.retry,
            )
            result_path = Path(work) / "result.mp4"
            with video.Mp4Encoder(
                result_path, info.width, info.height, info.fps, vocals.path
            ) as encoder:
                rendered = render(
                    context,
                    local,
                    pipeline,
                    encoder,
                    jobs_pb2.JOB_STAGE_SYNCING_LIPS,
                    (VOICE_EXTRACTED, FRAMES_DONE),
                )
                context.report(
                    jobs_pb2.JOB_STAGE_ENCODING, FRAMES_DONE, rendered.frames, rendered.frames
                )
            rendered.engines["voice"] = voice_engine
            return store_result(
                context, services, result_path, "video/mp4", local, rendered, ENCODED
            )

    def _vocals(self, context: JobContext, vocals: "VocalsFile") -> str:
        """Fills `vocals` from the recording, or from an earlier run of the job; returns the
        engine that separated them."""
        saved, engine = context.saved(VOCALS), context.saved(VOICE_ENGINE)
        if saved is not None and engine is not None:
            vocals.path.write_bytes(saved)
            return engine.decode()
        engine_name = self._extract_voice(context, vocals)
        context.save(VOCALS, vocals.path.read_bytes())
        context.save(VOICE_ENGINE, engine_name.encode())
        return engine_name

    def _features(self, context: JobContext, vocals: "VocalsFile") -> lipsync_pb2.AudioFeatures:
        saved = context.saved(FEATURES)
        if saved is not None:
            return lipsync_pb2.AudioFeatures.FromString(saved)
        features = self.services.lipsync.prepare_audio(
            vocals.pcm_chunks, vocals.audio_format(), context.spec["lipsync_engine"]
        )
        context.save(FEATURES, features.SerializeToString())
        return features

    def _extract_voice(self, context: JobContext, vocals: "VocalsFile") -> str:
        """Fills `vocals` from the recording; returns the engine that separated them."""
        context.report(jobs_pb2.JOB_STAGE_EXTRACTING_VOICE, PREPARED)

        def progress(fraction: float) -> None:
            context.report(
                jobs_pb2.JOB_STAGE_EXTRACTING_VOICE,
                PREPARED + (VOICE_EXTRACTED - PREPARED) * fraction,
            )

        with vocals:
            summary = self.services.voice.extract_voice(
                MediaRecord(**context.spec["voice"]).storage_object(),
                context.spec["voice_engine"],
                vocals.max_seconds,
                vocals,
                progress,
            )
        if not summary.voice_found:
            raise errors.FailedPrecondition(
                "No speech was found in the voice recording; record a few sentences and try again."
            )
        return summary.engine


class VocalsFile:
    """The vocals stem as it streams in, written to a WAV file and cut at the template's end:
    voice past it is never heard, and cutting keeps the lipsync input within its limits."""

    def __init__(self, path: Path, max_seconds: float) -> None:
        self.path = path
        self.max_seconds = max_seconds
        self._wav: wave.Wave_write | None = None
        self._format: media_pb2.AudioFormat | None = None
        self._frames_left = 0

    def __enter__(self) -> "VocalsFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._wav is not None:
            self._wav.close()  # writes the final sizes into the header
            self._wav = None

    def start_over(self) -> None:
        self._close()
        self._format = None

    def add(self, pcm: bytes, audio_format: media_pb2.AudioFormat) -> None:
        wav = self._wav or self._open(audio_format)
        frame_bytes = 2 * audio_format.channels
        kept = pcm[: self._frames_left * frame_bytes]
        self._frames_left -= len(kept) // frame_bytes
        if kept:
            wav.writeframes(kept)

    def _open(self, audio_format: media_pb2.AudioFormat) -> wave.Wave_write:
        if audio_format.encoding != media_pb2.AUDIO_ENCODING_PCM_S16LE or not (
            audio_format.sample_rate_hz and audio_format.channels
        ):
            raise errors.RemindError("The voice service sent vocals in an undeclared format.")
        self._format = audio_format
        self._frames_left = int(self.max_seconds * audio_format.sample_rate_hz)
        self._wav = wave.open(str(self.path), "wb")
        self._wav.setnchannels(audio_format.channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(audio_format.sample_rate_hz)
        return self._wav

    def audio_format(self) -> media_pb2.AudioFormat:
        """The vocals' format: as the voice service declared it, or from a saved file's
        header."""
        if self._format is None and self.path.exists():
            with wave.open(str(self.path), "rb") as wav:
                return media_pb2.AudioFormat(
                    encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE,
                    sample_rate_hz=wav.getframerate(),
                    channels=wav.getnchannels(),
                )
        if self._format is None:
            raise errors.FailedPrecondition("The voice service returned no vocals.")
        return self._format

    def pcm_chunks(self) -> Iterator[bytes]:
        with wave.open(str(self.path), "rb") as wav:
            while chunk := wav.readframes(AUDIO_CHUNK_FRAMES):
                yield chunk
