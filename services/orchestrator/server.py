"""Runs the orchestrator (the public API): `python -m services.orchestrator.server`."""

import logging
from pathlib import Path

import grpc
from remind.v1 import (
    job_service_pb2,
    job_service_pb2_grpc,
    media_service_pb2,
    media_service_pb2_grpc,
    template_service_pb2,
    template_service_pb2_grpc,
)

from services.orchestrator.auth import ApiKeys, AuthInterceptor
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.frame_pipeline import RetryPolicy
from services.orchestrator.gif_job import GifJobRunner
from services.orchestrator.jobs import JobBoard
from services.orchestrator.media_library import MediaLibrary
from services.orchestrator.model_clients import FaceSwapClient, LipSyncClient, VoiceClient
from services.orchestrator.servicer import JobServicer, MediaServicer, TemplateServicer
from services.orchestrator.template_library import TemplateLibrary
from services.orchestrator.video_job import VideoJobRunner
from services.shared.observability import configure_logging
from services.shared.server import RunningServer, serve_until_signalled, start_server
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore

log = logging.getLogger(__name__)


def _full_name(module: object, service: str) -> str:
    return module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined]


def start(settings: OrchestratorSettings, s3: S3Settings) -> RunningServer:
    store = ObjectStore(s3)
    store.ensure_buckets(
        settings.uploads_bucket,
        settings.templates_bucket,
        settings.results_bucket,
        settings.records_bucket,
    )
    media_library = MediaLibrary(store, settings)
    templates = TemplateLibrary(store, media_library, settings)
    templates.install_builtins()
    board = JobBoard(store, settings)
    interrupted = board.fail_interrupted()
    if interrupted:
        log.warning("marked %d interrupted jobs as failed", interrupted)
    limits = (settings.max_message_bytes, settings.stage_timeout_seconds)
    faceswap = FaceSwapClient(settings.faceswap_address, *limits)
    lipsync = LipSyncClient(settings.lipsync_address, *limits)
    voice = VoiceClient(settings.voice_address, *limits)
    retry = RetryPolicy(deadline_seconds=settings.stream_retry_seconds)
    gif_runner = GifJobRunner(media_library, templates, faceswap, retry)
    video_runner = VideoJobRunner(
        media_library, templates, faceswap, lipsync, voice, retry, settings.max_upload_bytes
    )

    def add_servicers(server: grpc.Server) -> list[str]:
        job_service_pb2_grpc.add_JobServiceServicer_to_server(
            JobServicer(
                board,
                media_library,
                templates,
                faceswap,
                voice,
                lipsync,
                gif_runner,
                video_runner,
                settings,
            ),
            server,
        )
        template_service_pb2_grpc.add_TemplateServiceServicer_to_server(
            TemplateServicer(templates), server
        )
        media_service_pb2_grpc.add_MediaServiceServicer_to_server(
            MediaServicer(media_library, settings), server
        )
        return [
            _full_name(job_service_pb2, "JobService"),
            _full_name(template_service_pb2, "TemplateService"),
            _full_name(media_service_pb2, "MediaService"),
        ]

    keys = ApiKeys.from_file(Path(settings.api_keys_file)) if settings.api_keys_file else None
    running = start_server(settings, add_servicers, [AuthInterceptor(keys, settings.open_tenant)])
    running.on_stop.extend([board.shutdown, faceswap.close, lipsync.close, voice.close])
    return running


def main() -> None:
    configure_logging("orchestrator")
    serve_until_signalled(start(OrchestratorSettings.load(), S3Settings.load()))


if __name__ == "__main__":
    main()
