"""Loads the official SimSwap files into our networks, all or nothing.

- Generators (`checkpoints/people/latest_net_G.pth`, `checkpoints/512/550000_net_G.pth`) are
  plain state_dicts (official `BaseModel.save_network`): loaded with `weights_only=True`.
- ArcFace (`arcface_model/arcface_checkpoint.tar`) is a pickled module, or an older training
  dict around one: loaded through `restricted_pickle`, then its state_dict is copied into our
  `ArcFaceResNet`. `convert_arcface` writes that state_dict once as a plain file.

Every load builds a fresh network and returns it only after `load_state_dict(strict=True)`
accepted every key and shape: a file that is missing, corrupt, of the wrong shape or with
extra keys raises CheckpointError and nothing half-loaded is ever served.

    python -m services.faceswap.simswap.checkpoints convert-arcface SRC.tar DST.pth
"""

from __future__ import annotations

import argparse
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from services.faceswap.simswap import restricted_pickle
from services.faceswap.simswap.arcface import ArcFaceResNet, architecture_of
from services.faceswap.simswap.generator import SimSwapGenerator
from services.shared.errors import EngineNotReady

# Errors torch.load and pickle raise on truncated, corrupt or foreign files.
_UNREADABLE = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    OSError,
    zipfile.BadZipFile,
)


class CheckpointError(EngineNotReady):
    """A weights file cannot be used: missing, unreadable, or not the expected network."""


def load_generator(path: Path, resolution: int) -> SimSwapGenerator:
    """The official generator for crops of `resolution` px, in eval mode on the CPU."""
    state = _read(path, weights_only=True)
    if not _is_state_dict(state):
        raise CheckpointError(f"{path} is not a state_dict of the SimSwap {resolution} generator")
    network = SimSwapGenerator(resolution)
    _load_strict(network, state, path)
    return network.eval()


def load_arcface(path: Path) -> ArcFaceResNet:
    """The ArcFace network from the official pickled module, the older dict, or a state_dict."""
    state = arcface_state_dict(path)
    try:
        blocks, use_se = architecture_of(state)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    network = ArcFaceResNet(blocks, use_se)
    _load_strict(network, state, path)
    return network.eval()


def arcface_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ArcFace weights of any published form, without running code from the file."""
    content = _read(path, weights_only=False)
    if isinstance(content, Mapping) and "model" in content:
        content = content["model"]  # the older training checkpoint
    if isinstance(content, nn.Module):
        # The older file wraps the network in DataParallel, whose only child is `module`.
        while set(content._modules) == {"module"}:
            content = content._modules["module"]
        return dict(content.state_dict())
    if _is_state_dict(content):
        prefix = "module."
        return {
            key[len(prefix) :] if key.startswith(prefix) else key: value
            for key, value in content.items()
        }
    raise CheckpointError(f"{path} holds {type(content).__name__}, not an ArcFace network")


def convert_arcface(source: Path, target: Path) -> None:
    """Writes the ArcFace weights as a plain state_dict that loads with weights_only=True."""
    network = load_arcface(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)


def _read(path: Path, weights_only: bool) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        if weights_only:
            return torch.load(path, map_location="cpu", weights_only=True)
        with warnings.catch_warnings():
            # A legacy-format file records each class's source as it was then: torch's own
            # layers have changed since, and our stand-in never matches. Only allow-listed
            # classes load, and their weights are copied by a strict load, so this is noise.
            warnings.filterwarnings("ignore", category=torch.serialization.SourceChangeWarning)
            return torch.load(
                path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
            )
    except restricted_pickle.RefusedGlobal as error:
        raise CheckpointError(f"{path}: {error}") from None
    except _UNREADABLE as error:
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint: {error}") from None


def _is_state_dict(content: Any) -> bool:
    return (
        isinstance(content, Mapping)
        and bool(content)
        and all(isinstance(key, str) for key in content)
        and all(isinstance(value, torch.Tensor) for value in content.values())
    )


def _load_strict(network: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(f"{path} does not fit the network: {detail[:600]}") from None
    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} has non-finite values in {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.faceswap.simswap.checkpoints",
        description="Converts the official pickled ArcFace file to a plain state_dict.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert-arcface", help="pickled module -> state_dict")
    convert.add_argument("source", type=Path, help="arcface_checkpoint.tar as published")
    convert.add_argument("target", type=Path, help="where to write the state_dict (.pth)")
    arguments = parser.parse_args(argv)
    try:
        convert_arcface(arguments.source, arguments.target)
    except CheckpointError as error:
        parser.exit(1, f"error: {error}\n")
    print(arguments.target)


if __name__ == "__main__":
    main()
