"""Runs the orchestrator (the public API): `python -m services.orchestrator.server`."""

import logging
import threading
from pathlib import Path

from remind.v1 import account_service_pb2 as account_pb2
from remind.v1 import account_service_pb2_grpc as account_grpc
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import job_service_pb2_grpc as jobs_grpc
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import media_service_pb2_grpc as media_grpc
from remind.v1 import template_service_pb2 as templates_pb2
from remind.v1 import template_service_pb2_grpc as templates_grpc

from services.orchestrator.auth import ApiKeys, AuthInterceptor, TokenIssuers, current_owner
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.erasure import Erasure
from services.orchestrator.gif_job import GifJob
from services.orchestrator.job_queue import JobQueue
from services.orchestrator.job_types import JobServices, JobType
from services.orchestrator.jobs import JobBoard, worker_name
from services.orchestrator.media_library import MediaLibrary
from services.orchestrator.model_clients import FaceSwapClient, LipSyncClient, VoiceClient
from services.orchestrator.retries import RetryPolicy
from services.orchestrator.servicer import (
    AccountServicer,
    JobServicer,
    MediaServicer,
    TemplateServicer,
)
from services.orchestrator.sweeper import Sweeper
from services.orchestrator.template_library import TemplateLibrary
from services.orchestrator.video_job import VideoJob
from services.shared import errors
from services.shared.admission import StreamCap
from services.shared.content_credentials import ContentSigner
from services.shared.server import GrpcService, RunningServer, serve, start_server
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.shared.storage_grants import GrantSigner

log = logging.getLogger(__name__)


def caller_tenant(_context: object) -> str:
    """The tenant of an authenticated call; "" for the open services (health, reflection)."""
    try:
        return current_owner().tenant
    except LookupError:
        return ""


def trust_anchors(settings: OrchestratorSettings, signer: ContentSigner) -> str:
    """The PEM roots VerifyMedia trusts: the configured ones, else our own chain's root."""
    if settings.c2pa_trust_anchors_file:
        return Path(settings.c2pa_trust_anchors_file).read_text()
    return signer.root_pem()


JOB_SERVICE = GrpcService.of(jobs_grpc, jobs_pb2, "JobService")
TEMPLATE_SERVICE = GrpcService.of(templates_grpc, templates_pb2, "TemplateService")
MEDIA_SERVICE = GrpcService.of(media_grpc, media_pb2, "MediaService")
ACCOUNT_SERVICE = GrpcService.of(account_grpc, account_pb2, "AccountService")
# Unary calls that decode or copy whole files: capped, so quick calls always find a thread.
SLOW_METHODS = (
    f"/{MEDIA_SERVICE.full_name}/VerifyMedia",
    f"/{MEDIA_SERVICE.full_name}/FinishUpload",
    f"/{MEDIA_SERVICE.full_name}/DetectFaces",
    f"/{TEMPLATE_SERVICE.full_name}/CreateTemplate",
)


def start(settings: OrchestratorSettings, s3: S3Settings) -> RunningServer:
    # First: a service that would store results unsigned must not start at all.
    signer = ContentSigner(
        settings.c2pa_certificate_file,
        settings.c2pa_private_key_file,
        settings.c2pa_timestamp_url,
    )
    grants = GrantSigner(
        settings.grant_signing_key, settings.grant_seconds, "REMIND_ORCHESTRATOR_GRANT_SIGNING_KEY"
    )
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
    job_queue = JobQueue(settings, worker_name())
    try:
        job_queue.connect()
    except errors.Unavailable:
        raise errors.Misconfigured(
            f"cannot reach the job queue (NATS) at {settings.nats_url} with the given "
            "credentials; check REMIND_ORCHESTRATOR_NATS_URL, _NATS_USER and _NATS_PASSWORD"
        ) from None
    board = JobBoard(store, settings, job_queue, media_library)
    retry = RetryPolicy(window_seconds=settings.stream_retry_seconds)
    limits = (settings.max_message_bytes, settings.stage_timeout_seconds, retry)
    faceswap = FaceSwapClient(settings.faceswap_address, *limits)
    lipsync = LipSyncClient(settings.lipsync_address, *limits)
    voice = VoiceClient(settings.voice_address, *limits, grants)
    services = JobServices(
        media_library, templates, faceswap, lipsync, voice, retry, signer, settings
    )
    job_types: dict[int, JobType] = {
        jobs_pb2.JOB_KIND_GIF: GifJob(services),
        jobs_pb2.JOB_KIND_VIDEO: VideoJob(services),
    }

    board.start_workers(lambda context: job_types[context.kind].run(context))
    erasure = Erasure(board, media_library)
    anchors = trust_anchors(settings, signer)
    servicers = [
        (JobServicer(board, media_library, job_types, erasure), JOB_SERVICE),
        (TemplateServicer(templates), TEMPLATE_SERVICE),
        (MediaServicer(media_library, settings, anchors, erasure, services), MEDIA_SERVICE),
        (AccountServicer(erasure), ACCOUNT_SERVICE),
    ]
    keys = ApiKeys.from_file(Path(settings.api_keys_file)) if settings.api_keys_file else None
    issuers = (
        TokenIssuers.from_file(Path(settings.token_issuers_file))
        if settings.token_issuers_file
        else None
    )
    auth = AuthInterceptor(keys, issuers, settings.open_tenant)
    per_tenant = StreamCap("per tenant", settings.max_streams_per_tenant, caller_tenant)
    running = start_server(settings, servicers, [auth], [per_tenant], SLOW_METHODS)
    sweeping = threading.Event()
    sweeper = Sweeper(media_library, settings)
    threading.Thread(
        target=sweeper.run_every,
        args=(settings.sweep_interval_seconds, sweeping),
        name="sweeper",
        daemon=True,
    ).start()
    running.on_stop.extend(
        [sweeping.set, board.shutdown, faceswap.close, lipsync.close, voice.close]
    )
    return running


if __name__ == "__main__":
    serve("orchestrator", lambda: start(OrchestratorSettings.load(), S3Settings.load()))
