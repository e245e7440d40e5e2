"""The one place that maps engine names to engines: adding an engine adds one line here."""

from __future__ import annotations

from collections.abc import Callable

from services.voice.config import VoiceSettings
from services.voice.engines.base import VoiceEngine
from services.voice.engines.spectral import SpectralEngine
from services.voice.engines.spleeter import SpleeterEngine


def engine_factories(settings: VoiceSettings) -> dict[str, Callable[[], VoiceEngine]]:
    """Best first: "auto" resolves to the first engine in this order that loaded."""
    return {
        "spleeter": lambda: SpleeterEngine(
            settings.spleeter_model_dir, settings.cache_dir, settings.device
        ),
        "spectral": lambda: SpectralEngine(use_vad=settings.spectral_vad),
    }
