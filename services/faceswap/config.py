"""Faceswap service settings, from REMIND_FACESWAP_* environment variables."""

from dataclasses import dataclass
from pathlib import Path

from services.shared.settings import ModelServerSettings, from_env

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FaceSwapSettings(ModelServerSettings):
    port: int = 50061
    # A 50-megapixel photo is refused: nothing useful needs more than this.
    max_photo_pixels: int = 40_000_000
    # Template frames are at most 1080p.
    max_frame_pixels: int = 1920 * 1080
    # Frames of one stream read and submitted ahead of the one being returned, so that
    # batching engines can fill a batch; also bounds the memory one stream can hold.
    frames_in_flight: int = 8
    # Neural engine weights (see README, SimSwap engine); empty: models/ at the repository root.
    models_dir: str = ""
    # Which published SimSwap generator serves: 224 (checkpoints/people) or 512 (beta).
    simswap_resolution: int = 224
    # Frames of all streams share forward passes: at most this many per pass, and the first
    # frame waits at most this long for others to join it.
    batch_max_size: int = 8
    batch_max_wait_ms: float = 10.0
    # Torch CPU threads; 0 uses every core.
    torch_threads: int = 0

    @classmethod
    def load(cls) -> "FaceSwapSettings":
        return from_env(cls, "REMIND_FACESWAP")

    def models_path(self) -> Path:
        return Path(self.models_dir) if self.models_dir else REPOSITORY_ROOT / "models"
