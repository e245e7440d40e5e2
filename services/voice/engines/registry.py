"""The one place that maps engine names to engines: adding an engine adds one entry here.

Each engine's module is imported only when that engine is built, so a process that runs one
engine (the file command) does not pay for the others' libraries.
"""

from __future__ import annotations

from collections.abc import Callable

from services.voice.config import VoiceSettings
from services.voice.engines.base import VoiceEngine


def engine_factories(settings: VoiceSettings) -> dict[str, Callable[[], VoiceEngine]]:
    """Best first: "auto" resolves to the first engine in this order that loaded."""

    def spleeter() -> VoiceEngine:
        from services.voice.engines.spleeter import SpleeterEngine

        return SpleeterEngine(
            settings.spleeter_model_dir, settings.cache_dir, settings.device, settings.cpu_threads
        )

    def spectral() -> VoiceEngine:
        from services.voice.engines.spectral import SpectralEngine

        return SpectralEngine(use_vad=settings.spectral_vad)

    return {"spleeter": spleeter, "spectral": spectral}
