"""The one place that maps engine names to engines: adding an engine adds one line here."""

from __future__ import annotations

from collections.abc import Callable

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceSwapEngine
from services.faceswap.engines.landmark_warp import LandmarkWarpEngine
from services.faceswap.engines.simswap import SimSwapEngine


def engine_factories(settings: FaceSwapSettings) -> dict[str, Callable[[], FaceSwapEngine]]:
    """Best first: "auto" resolves to the first engine in this order that loaded."""
    return {
        "simswap": lambda: SimSwapEngine(settings),
        "landmark_warp": LandmarkWarpEngine,
    }
