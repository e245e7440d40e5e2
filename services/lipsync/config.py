"""Lipsync service settings, from REMIND_LIPSYNC_* environment variables."""

from dataclasses import dataclass
from pathlib import Path

from services.shared.settings import ModelServerSettings, from_env

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LipSyncSettings(ModelServerSettings):
    port: int = 50081
    # Neural engine weights (see README, Lipsync service); empty: models/ at the repository root.
    models_dir: str = ""
    # Which published Wav2Lip generator serves: "wav2lip_gan" (better visuals) or "wav2lip"
    # (the most accurate sync).
    wav2lip_checkpoint: str = "wav2lip_gan"
    # S3FD searches frames downscaled to at most this side (px); 0 searches them at full size,
    # as the official script does.
    detector_max_side: int = 640
    # Voices over 2 minutes or 32 MiB on the wire are refused (templates last 30-60 s).
    max_audio_seconds: float = 120.0
    max_audio_bytes: int = 32 * 1024 * 1024
    # Template frames are at most 1080p.
    max_frame_pixels: int = 1920 * 1080
    # Frames per second a stream may declare.
    max_fps: float = 120.0
    # Frames of one stream read and submitted ahead of the one being returned, so that
    # batching engines can fill a batch; also bounds the memory one stream can hold.
    frames_in_flight: int = 8
    # Frames of all streams share forward passes: at most this many per pass, and the first
    # frame waits at most this long for others to join it.
    batch_max_size: int = 16
    batch_max_wait_ms: float = 10.0
    # A stream that sends nothing for this long (its config included) is ended.
    request_idle_timeout_seconds: float = 30.0
    # Torch CPU threads; 0 uses every core.
    torch_threads: int = 0

    @classmethod
    def load(cls) -> "LipSyncSettings":
        return from_env(cls, "REMIND_LIPSYNC")

    def models_path(self) -> Path:
        return Path(self.models_dir) if self.models_dir else REPOSITORY_ROOT / "models"
