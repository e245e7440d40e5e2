"""Lipsync service settings, from REMIND_LIPSYNC_* environment variables."""

from dataclasses import dataclass

from services.shared.settings import FrameServerSettings, from_env


@dataclass(frozen=True)
class LipSyncSettings(FrameServerSettings):
    port: int = 50081
    # Which published Wav2Lip generator serves: "wav2lip_gan" (better visuals) or "wav2lip"
    # (the most accurate sync).
    wav2lip_checkpoint: str = "wav2lip_gan"
    # S3FD searches frames downscaled to at most this side (px); 0 searches them at full size,
    # as the official script does.
    detector_max_side: int = 640
    # Voices over 2 minutes or 32 MiB on the wire are refused (templates last 30-60 s).
    max_audio_seconds: float = 120.0
    max_audio_bytes: int = 32 * 1024 * 1024
    # Frames per second a stream may declare.
    max_fps: float = 120.0
    # A bigger batch than faceswap's: the Wav2Lip generator is small.
    batch_max_size: int = 16

    @classmethod
    def load(cls) -> "LipSyncSettings":
        return from_env(cls, "REMIND_LIPSYNC")
