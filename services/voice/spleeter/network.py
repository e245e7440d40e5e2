"""The two U-Nets in one onnxruntime session: stereo magnitudes in, each stem's estimate out.

onnxruntime rather than torch: on the 2-core development CPU it runs both U-Nets on a 512-frame
segment in 0.32-0.38 s where torch 2.13 takes 0.49-0.58 s, and it imports in 0.3 s where torch
takes 3.1-3.5 s, which is most of what a one-file command pays before any work. CUDA when
onnxruntime-gpu finds a GPU (the GPU images; float32 there too), else the CPU.
"""

from __future__ import annotations

import logging

import numpy as np

from services.shared.errors import EngineNotReady
from services.voice.spleeter.checkpoints import ConvertedModel
from services.voice.spleeter.unet import INPUT

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class UnreadableModel(EngineNotReady):
    """onnxruntime cannot load the converted model (a damaged cache file)."""


class SpleeterNetworks:
    def __init__(self, model: ConvertedModel, device: str = "auto", threads: int = 0) -> None:
        """`device`: "auto" (CUDA when present), "cpu" or "cuda"; `threads`: intra-op threads
        on the CPU (0: one per core)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        available = onnxruntime.get_available_providers()
        if device == "cuda" and CUDA not in available:
            raise EngineNotReady("REMIND_VOICE_DEVICE=cuda but onnxruntime has no CUDA provider")
        wanted = [CUDA, CPU] if device != "cpu" and CUDA in available else [CPU]
        source = str(model.source) if not isinstance(model.source, bytes) else model.source
        try:
            self.session = onnxruntime.InferenceSession(
                source, sess_options=options, providers=wanted
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
            raise UnreadableModel(
                f"the converted Spleeter model cannot be loaded: {error}"
            ) from None
        # onnxruntime-gpu lists CUDA even on machines without a GPU: ask what the session got.
        self.device = "cuda" if CUDA in self.session.get_providers() else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise EngineNotReady("REMIND_VOICE_DEVICE=cuda but no CUDA device is available")
        self.stems = tuple(output.name for output in self.session.get_outputs())

    def estimate(self, magnitude: np.ndarray) -> dict[str, np.ndarray]:
        """Each stem's estimated magnitudes for stereo magnitudes (frames, bins, 2)."""
        batch = np.ascontiguousarray(magnitude.transpose(2, 0, 1), np.float32)[None]
        outputs = self.session.run(None, {INPUT: batch})
        return {
            stem: out[0].transpose(1, 2, 0) for stem, out in zip(self.stems, outputs, strict=True)
        }

    def close(self) -> None:
        del self.session
