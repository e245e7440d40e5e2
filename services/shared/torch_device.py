"""Which torch device a neural engine runs on: CUDA when present (the GPU nodes), else the CPU.

Imported only by model code, after an engine has found its weights, so that a server without
weights never pays torch's import.
"""

from __future__ import annotations

import os

import torch

from services.shared.errors import EngineNotReady


def pick_device(setting: str = "auto", cpu_threads: int = 0) -> torch.device:
    """"auto": CUDA when available, else the CPU; "cuda" refuses a machine without it.

    On the CPU, torch uses `cpu_threads` intra-op threads (0: one per core).
    """
    if setting not in ("auto", "cpu", "cuda"):
        raise EngineNotReady(f"device {setting!r} is not one of auto, cpu, cuda")
    if setting == "cuda" and not torch.cuda.is_available():
        raise EngineNotReady("the device is set to cuda but no CUDA device is available")
    if setting != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(cpu_threads or os.cpu_count() or 1)
    return torch.device("cpu")
