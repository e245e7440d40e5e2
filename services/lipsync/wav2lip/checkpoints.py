"""Loading the official Wav2Lip and S3FD files as they are published.

`wav2lip.pth` / `wav2lip_gan.pth` are training checkpoints: a dict with `state_dict` (keys
prefixed `module.` when saved from DataParallel), plus `optimizer`, `global_step` and
`global_epoch`. `s3fd.pth` is a bare state dict. Both contain tensors and plain Python values
only, so they load with `weights_only=True`: no code from the file ever runs.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from services.shared.errors import EngineNotReady

DATA_PARALLEL_PREFIX = "module."


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, with any `module.` prefixes removed."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise EngineNotReady(
            f"{path} is not a PyTorch checkpoint of plain tensors ({error}); fetch it again"
        ) from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise EngineNotReady(f"{path} holds no state dict of tensors")
    return {_strip_prefix(key): value for key, value in checkpoint.items()}


def _strip_prefix(key: str) -> str:
    return key[len(DATA_PARALLEL_PREFIX) :] if key.startswith(DATA_PARALLEL_PREFIX) else key


def load_strict(network: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Loads every parameter and buffer, or raises EngineNotReady naming what does not fit."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        key for key in set(expected) & set(state) if expected[key].shape != state[key].shape
    )
    if missing or unexpected or wrong_shape:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong_shape)):  # fmt: skip
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise EngineNotReady(f"{path} is not a {what} checkpoint: {'; '.join(details)}")
    network.load_state_dict(state, strict=True)


def save_training_checkpoint(network: nn.Module, path: Path, data_parallel: bool = False) -> None:
    """Writes `network` as the official training script does (`state_dict`, `optimizer`,
    `global_step`, `global_epoch`; keys prefixed `module.` when it ran under DataParallel)."""
    prefix = DATA_PARALLEL_PREFIX if data_parallel else ""
    state = {f"{prefix}{key}": value for key, value in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 0, "global_epoch": 0}, path)
