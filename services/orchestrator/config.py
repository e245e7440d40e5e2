"""Orchestrator settings, from REMIND_ORCHESTRATOR_* environment variables."""

from dataclasses import dataclass

from services.shared.settings import ServerSettings, from_env


@dataclass(frozen=True)
class OrchestratorSettings(ServerSettings):
    port: int = 50051
    faceswap_address: str = "127.0.0.1:50061"
    lipsync_address: str = "127.0.0.1:50081"
    voice_address: str = "127.0.0.1:50071"
    uploads_bucket: str = "remind-uploads"
    templates_bucket: str = "remind-templates"
    results_bucket: str = "remind-results"
    records_bucket: str = "remind-records"
    # JSON file of API key digests per tenant, and JSON file of the token issuers whose users
    # are people of a tenant (see auth.py). Both empty: auth off, and every caller is
    # `open_tenant` (a developer's own machine only).
    api_keys_file: str = ""
    token_issuers_file: str = ""
    open_tenant: str = "local"
    # Open streaming calls of one tenant (every caller without one, e.g. health Watch, counts
    # as one tenant), on top of the caps of every server (see ServerSettings).
    max_streams_per_tenant: int = 500
    # Job requests carry the caller's `consent` ("this is my face and voice, or I have the
    # person's consent"), always kept in the job. True: a job without it is refused.
    require_consent: bool = False
    max_upload_bytes: int = 50 * 1024 * 1024
    max_chunk_bytes: int = 1024 * 1024
    gif_template_min_seconds: float = 1.0
    gif_template_max_seconds: float = 6.0
    video_template_min_seconds: float = 1.0
    video_template_max_seconds: float = 60.0
    # 1080p in either orientation.
    max_template_long_side: int = 1920
    max_template_short_side: int = 1080
    # Templates are measured from their packets, never taken at their headers' word: at most
    # this many frames, played at most this fast, and at most this many pixels in all their
    # frames together (60 s of 1080p at 30 fps), which bounds what one job can cost.
    max_template_frames: int = 3600
    max_template_fps: float = 60.0
    max_template_pixel_frames: int = 1920 * 1080 * 30 * 60
    presigned_url_seconds: int = 900
    # An upload not finished within its lifetime is removed; so is, after the grace, anything
    # in storage no record owns (left by a process killed mid-write). The sweep runs this often.
    upload_lifetime_seconds: int = 24 * 3600
    sweep_grace_seconds: int = 3600
    sweep_interval_seconds: float = 600.0
    # The job queue (NATS JetStream, see job_queue.py): its address and credentials, and how
    # many servers keep each stream and bucket (3 in a production cluster).
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = ""
    nats_password: str = ""
    nats_replicas: int = 1
    # Jobs one replica runs at once; it takes no more from the queue than that.
    job_workers: int = 2
    # Jobs queued or running in all replicas, and per tenant; more are refused (RESOURCE_EXHAUSTED).
    max_queued_jobs: int = 128
    max_jobs_per_tenant: int = 32
    # A worker that has not renewed its job's lease for this long is taken to be gone: the job
    # goes to another replica. Renewed every quarter of it.
    job_lease_seconds: float = 30.0
    # A job started this many times whose worker died each time (a template that crashes it,
    # say) fails at its next start.
    job_max_attempts: int = 3
    # On SIGTERM, running jobs may finish for this long; the rest go back to the queue.
    job_finish_seconds: float = 20.0
    # Deadline for one model-service call (a whole frame stream included).
    stage_timeout_seconds: float = 600.0
    # How long a model-service call is retried while the service is away, counted from its
    # first failure since the last progress (a frame or message that got through).
    stream_retry_seconds: float = 120.0
    # Content Credentials (C2PA) on every result: the signing certificate chain (PEM, the
    # signing certificate first) and its private key (PEM). Required: a result is never stored
    # unsigned (`make up` makes local ones; production mounts a Secret).
    c2pa_certificate_file: str = ""
    c2pa_private_key_file: str = ""
    # An RFC 3161 timestamp authority for the signatures; empty: none (no internet here).
    c2pa_timestamp_url: str = ""
    # PEM roots whose signatures VerifyMedia reports as trusted; empty: the signing chain's
    # last certificate.
    c2pa_trust_anchors_file: str = ""
    # How often progress is written to the job record while a job runs.
    progress_persist_seconds: float = 1.0
    # The storage grant private key (base64, see services/shared/storage_grants.py): model
    # services read and write stored objects only with a grant it signs. Required.
    grant_signing_key: str = ""
    # How long a grant is good for: it is checked when a model call starts, not after.
    grant_seconds: float = 120.0

    @classmethod
    def load(cls) -> "OrchestratorSettings":
        return from_env(cls, "REMIND_ORCHESTRATOR")
