"""Faceswap service settings, from REMIND_FACESWAP_* environment variables."""

from dataclasses import dataclass

from services.shared.settings import ServerSettings, from_env


@dataclass(frozen=True)
class FaceSwapSettings(ServerSettings):
    port: int = 50061
    # Comma-separated engines to load at start; empty loads every known engine.
    engines: str = ""
    # A 50-megapixel photo is refused: nothing useful needs more than this.
    max_photo_pixels: int = 40_000_000
    # Template frames are at most 1080p.
    max_frame_pixels: int = 1920 * 1080
    # Frames of one stream read and submitted ahead of the one being returned, so that
    # batching engines can fill a batch; also bounds the memory one stream can hold.
    frames_in_flight: int = 8

    @classmethod
    def load(cls) -> "FaceSwapSettings":
        return from_env(cls, "REMIND_FACESWAP")

    def enabled_engines(self) -> list[str]:
        return [name.strip() for name in self.engines.split(",") if name.strip()]
