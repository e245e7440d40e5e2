"""Faceswap service settings, from REMIND_FACESWAP_* environment variables."""

from dataclasses import dataclass

from services.shared.settings import FrameServerSettings, from_env


@dataclass(frozen=True)
class FaceSwapSettings(FrameServerSettings):
    port: int = 50061
    # A 50-megapixel photo is refused: nothing useful needs more than this.
    max_photo_pixels: int = 40_000_000
    # Which published SimSwap generator serves: 224 (checkpoints/people) or 512 (beta).
    simswap_resolution: int = 224

    @classmethod
    def load(cls) -> "FaceSwapSettings":
        return from_env(cls, "REMIND_FACESWAP")
