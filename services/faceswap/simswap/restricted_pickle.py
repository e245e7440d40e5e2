"""A pickle module for `torch.load(pickle_module=...)` that only rebuilds an allow-list of names.

The official ArcFace file is a whole pickled `nn.Module` (`models.arcface_models.ResNet`); an
older one is InsightFace-v2's training checkpoint dict (its `train.py`): a `DataParallel` around
the network, an `ArcMarginModel` head and an SGD optimizer, with the classes named after that
repository's top-level `models.py` (`models.ResNet`, ...). Plain `torch.load` would need the
official code on the path and would run whatever code the file names. Here every global the
file asks for is looked up in `ALLOWED`: the official classes, under both module names, map to
an inert stand-in that only holds their state (the weights are then copied into our own network
by state_dict), torch's own layer classes and tensor rebuild functions map to themselves, and
anything else is refused with a clear error.

torch's legacy (pre-1.6) format also records each nn.Module class's source and, on load,
compares it with the class it gets back: that class must be an nn.Module (torch reads
`dump_patches`); the SourceChangeWarnings that follow are noise, silenced by the caller.

Used as `torch.load(path, pickle_module=restricted_pickle, weights_only=False)`: torch wraps
`Unpickler` and calls our `find_class` for every global except storage types.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import torch
from torch import nn


class ModuleState(nn.Module):
    """Stands in for an official nn.Module class: holds its parameters, buffers and children."""

    # SimSwap's notebooks set `nn.Module.dump_patches = True`; torch would then write a
    # `.patch` file into the working directory for every stand-in of a legacy file.
    dump_patches = False

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise TypeError("a checkpoint stand-in is not runnable: copy its state_dict instead")


class IgnoredObject:
    """Stands in for the optimizer of the training checkpoint, which inference does not need."""

    def __new__(cls, *args: Any, **kwargs: Any) -> IgnoredObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# InsightFace-v2 pickled the older file from its top-level `models.py`; SimSwap re-pickled the
# network from `models/arcface_models.py`.
_OFFICIAL_MODULES = ("models", "models.arcface_models")
# The training head (ArcMarginModel) is an nn.Module too: held by the stand-in, then dropped.
_OFFICIAL_CLASSES = ("ResNet", "IRBlock", "SEBlock", "ArcMarginModel")
_LAYERS = {
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm1d", "BatchNorm2d"),
    "torch.nn.modules.activation": ("PReLU", "Sigmoid", "ReLU"),
    "torch.nn.modules.pooling": ("MaxPool2d", "AdaptiveAvgPool2d"),
    "torch.nn.modules.dropout": ("Dropout",),
    "torch.nn.modules.linear": ("Linear",),
    "torch.nn.modules.container": ("Sequential",),
}

ALLOWED: dict[tuple[str, str], Any] = {
    # The optimizer of the older checkpoint: dropped.
    ("torch.optim.sgd", "SGD"): IgnoredObject,
    ("torch.optim.optimizer", "_RequiredParameter"): IgnoredObject,
    # DataParallel only wraps the network in `.module`; the stand-in keeps that child.
    ("torch.nn.parallel.data_parallel", "DataParallel"): ModuleState,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "float32"): torch.float32,
}
for _module in _OFFICIAL_MODULES:
    for _name in _OFFICIAL_CLASSES:
        ALLOWED[(_module, _name)] = ModuleState
for _module, _names in _LAYERS.items():
    for _name in _names:
        ALLOWED[(_module, _name)] = getattr(nn, _name)


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a class or function outside the allow-list."""


# Protocol-2 pickles name Python 2 modules (torch.save's default protocol is 2).
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULES.get(module, module)
        allowed = ALLOWED.get((module, name))
        if allowed is None:
            raise RefusedGlobal(
                f"the checkpoint refers to {module}.{name}, which is not an allowed class or "
                "function for SimSwap checkpoints; it is not loaded"
            )
        return allowed


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    return Unpickler(io.BytesIO(data), **kwargs).load()
