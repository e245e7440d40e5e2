"""The one place that maps engine names to engines: adding an engine adds one line here."""

from __future__ import annotations

from collections.abc import Callable

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.base import LipSyncEngine
from services.lipsync.engines.mouth_motion import MouthMotionEngine
from services.lipsync.engines.wav2lip import Wav2LipEngine


def engine_factories(settings: LipSyncSettings) -> dict[str, Callable[[], LipSyncEngine]]:
    """Best first: "auto" resolves to the first engine in this order that loaded."""
    return {
        "wav2lip": lambda: Wav2LipEngine(settings),
        "mouth_motion": MouthMotionEngine,
    }
