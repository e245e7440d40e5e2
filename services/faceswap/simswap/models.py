"""The loaded SimSwap networks on one device, and their batched forward passes.

Crops travel as RGB uint8 arrays (S x S x 3); identities as unit-length float32 vectors.
On CUDA the passes run under fp16 autocast; on the CPU in float32 with `cpu_threads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from services.faceswap.simswap.arcface import identity_embedding
from services.faceswap.simswap.checkpoints import load_arcface, load_generator
from services.shared.torch_device import pick_device


class SimSwapModels:
    def __init__(
        self,
        arcface_path: Path,
        generator_path: Path,
        resolution: int,
        device: torch.device | None = None,
        cpu_threads: int = 0,
    ) -> None:
        self.device = device or pick_device(cpu_threads=cpu_threads)
        self.resolution = resolution
        # Both load fully (strict) before either is kept: never a half-loaded engine.
        arcface = load_arcface(arcface_path)
        generator = load_generator(generator_path, resolution)
        self.arcface = arcface.to(self.device)
        self.generator = generator.to(self.device)

    def identity(self, crop: np.ndarray) -> np.ndarray:
        """The unit-length 512-d ArcFace embedding of one aligned crop."""
        with torch.inference_mode():
            embedding = identity_embedding(self.arcface, self._crops_tensor([crop]))
        return embedding[0].float().cpu().numpy()

    def swap(
        self, crops: Sequence[np.ndarray], identities: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """One generator pass over a batch: the crops with the identities put in (uint8 RGB)."""
        latent = torch.from_numpy(np.stack(identities).astype(np.float32)).to(self.device)
        with torch.inference_mode(), self._autocast():
            output = self.generator(self._crops_tensor(crops), latent)
        pixels = (output.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())

    def _crops_tensor(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(crops)).to(self.device)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self.device.type,
            dtype=torch.float16,
            enabled=self.device.type == "cuda",
        )
