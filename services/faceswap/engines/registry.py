"""The one place that maps engine names to engines: adding an engine adds one line here."""

from __future__ import annotations

from services.faceswap.engines.base import FaceSwapEngine
from services.faceswap.engines.landmark_warp import LandmarkWarpEngine
from services.faceswap.engines.simswap import SimSwapEngine
from services.shared.errors import InvalidInput

# Best first: "auto" resolves to the first engine in this order that loaded.
ENGINES: dict[str, type[FaceSwapEngine]] = {
    "simswap": SimSwapEngine,
    "landmark_warp": LandmarkWarpEngine,
}
PREFERENCE: tuple[str, ...] = tuple(ENGINES)


def create_engine(name: str) -> FaceSwapEngine:
    """A new, not yet loaded engine of this name."""
    engine_class = ENGINES.get(name)
    if engine_class is None:
        known = ", ".join(sorted(ENGINES))
        raise InvalidInput(f"Unknown face swap engine {name!r}: choose one of {known}.")
    return engine_class()
