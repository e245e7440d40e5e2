"""The loaded Wav2Lip generator on one device, and its batched forward pass.

On CUDA the pass runs under fp16 autocast; on the CPU in float32 with `cpu_threads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from services.lipsync.wav2lip.checkpoints import load_state_dict_file, load_strict
from services.lipsync.wav2lip.network import FACE_SIZE, MEL_BANDS, MEL_WINDOW, Wav2Lip
from services.shared.torch_device import pick_device


def load_generator(path: Path) -> Wav2Lip:
    network = Wav2Lip()
    load_strict(network, load_state_dict_file(path), "Wav2Lip", path)
    return network.eval()


def network_inputs(crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
    """(B, 6, 96, 96) float32 from 96 x 96 BGR uint8 crops, as the official `datagen`: the crop
    with its lower half zeroed, then the crop itself as the reference, divided by 255."""
    crops = np.stack(crops_bgr).astype(np.float32)
    masked = crops.copy()
    masked[:, FACE_SIZE // 2 :] = 0.0
    faces = np.concatenate([masked, crops], axis=3) / 255.0
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)


class Wav2LipModel:
    def __init__(
        self, checkpoint: Path, device: torch.device | None = None, cpu_threads: int = 0
    ) -> None:
        self.device = device or pick_device(cpu_threads=cpu_threads)
        self.network = load_generator(checkpoint).to(self.device)

    def generate(
        self, crops_bgr: Sequence[np.ndarray], mel_windows: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """One pass: 96 x 96 BGR uint8 faces with their mouths for the (80, 16) mel windows."""
        faces = torch.from_numpy(network_inputs(crops_bgr)).to(self.device)
        mels = np.stack(mel_windows).astype(np.float32).reshape(-1, 1, MEL_BANDS, MEL_WINDOW)
        with torch.inference_mode(), self._autocast():
            output = self.network(torch.from_numpy(mels).to(self.device), faces)
        pixels = (output.float().clamp(0, 1) * 255.0).to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"
        )
