"""The one place that maps engine names to engines: adding an engine adds one line here."""

from __future__ import annotations

from collections.abc import Callable

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceSwapEngine
from services.faceswap.engines.landmark_warp import LandmarkWarpEngine
from services.faceswap.engines.simswap import SimSwapEngine
from services.shared.errors import InvalidInput


def engine_factories(settings: FaceSwapSettings) -> dict[str, Callable[[], FaceSwapEngine]]:
    """Best first: "auto" resolves to the first engine in this order that loaded."""
    return {
        "simswap": lambda: SimSwapEngine(settings),
        "landmark_warp": LandmarkWarpEngine,
    }


def create_engine(name: str, settings: FaceSwapSettings | None = None) -> FaceSwapEngine:
    """A new, not yet loaded engine of this name."""
    factories = engine_factories(settings or FaceSwapSettings.load())
    if name not in factories:
        known = ", ".join(sorted(factories))
        raise InvalidInput(f"Unknown face swap engine {name!r}: choose one of {known}.")
    return factories[name]()
