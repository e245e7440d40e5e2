"""Typed settings read from environment variables, one prefix per service.

A settings class is a frozen dataclass whose field defaults are the documented defaults;
`from_env` fills each field from `PREFIX_FIELD_NAME` when that variable is set.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

SettingsT = TypeVar("SettingsT")


def _convert(raw: str, kind: Any, name: str) -> Any:
    if kind is bool or kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {raw!r}")
    if kind is int or kind == "int":
        return int(raw)
    if kind is float or kind == "float":
        return float(raw)
    return raw


def from_env(cls: type[SettingsT], prefix: str, **overrides: Any) -> SettingsT:
    """Builds `cls` from `PREFIX_<FIELD>` variables; explicit overrides win."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        variable = f"{prefix}_{field.name}".upper()
        if variable in os.environ:
            values[field.name] = _convert(os.environ[variable], field.type, variable)
    values.update(overrides)
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Where the S3 store is. Locally SeaweedFS; in production MinIO (see deploy/)."""

    endpoint: str = "127.0.0.1:8333"
    access_key: str = "remind"
    secret_key: str = "remind-local-secret"
    secure: bool = False
    region: str = "us-east-1"
    # The address browsers and apps use for presigned URLs, when it differs from `endpoint`.
    public_endpoint: str = ""
    public_secure: bool = True

    @classmethod
    def load(cls) -> "S3Settings":
        return from_env(cls, "REMIND_S3")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What every gRPC server shares: ports, threads, stream caps, message limits, shutdown
    grace."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0  # 0 = no metrics endpoint
    # Threads for unary calls and health checks, which streams can never take.
    max_workers: int = 16
    # Open streaming calls, each holding a thread while open, idle or not: in all, and per
    # caller address. A stream beyond either cap is refused with RESOURCE_EXHAUSTED.
    max_streams: int = 1000
    max_streams_per_address: int = 100
    # Proxies (the edge) whose x-forwarded-for names the caller's address: comma-separated
    # addresses or networks. Empty: the caller's address is the peer's.
    trusted_proxies: str = ""
    # A request stream that sends nothing for this long (its first message included) is ended.
    request_idle_timeout_seconds: float = 30.0
    max_message_bytes: int = 8 * 1024 * 1024
    shutdown_grace_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class ModelServerSettings(ServerSettings):
    """What every model service adds: its engines, their weights and threads."""

    # Comma-separated engines to load at start; empty loads every known engine.
    engines: str = ""
    # Neural engine weights (see README); empty: models/ at the repository root.
    models_dir: str = ""
    # CPU threads of the engines' runtime (torch, onnxruntime); 0 uses every core.
    cpu_threads: int = 0

    def enabled_engines(self) -> list[str]:
        return [name.strip() for name in self.engines.split(",") if name.strip()]

    def models_path(self) -> Path:
        return Path(self.models_dir) if self.models_dir else REPOSITORY_ROOT / "models"


@dataclasses.dataclass(frozen=True)
class FrameServerSettings(ModelServerSettings):
    """What the frame services (faceswap, lipsync) add: frame limits and batching."""

    # Template frames are at most 1080p.
    max_frame_pixels: int = 1920 * 1080
    # Frames of one stream read and submitted ahead of the one being returned, so that
    # batching engines can fill a batch; also bounds the memory one stream can hold.
    frames_in_flight: int = 8
    # Frames of all streams share forward passes: at most this many per pass, and the first
    # frame waits at most this long for others to join it.
    batch_max_size: int = 8
    batch_max_wait_ms: float = 10.0
