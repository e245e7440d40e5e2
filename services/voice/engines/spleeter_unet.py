"""Spleeter's U-Net in PyTorch, loading the official TensorFlow variables.

Reproduces `apply_unet` of spleeter/model/functions/unet.py with the 2stems parameters
(resources/2stems.json: model "unet.unet", no params, so LeakyReLU(0.2) in the encoder and
ReLU in the decoder):
- encoder: six 5x5 stride-2 convolutions (16, 32, 64, 128, 256, 512 filters), each followed by
  batch norm and LeakyReLU; the skip connections carry the convolutions' raw outputs, and the
  decoder starts from the sixth convolution's raw output (its batch norm is never used);
- decoder: six 5x5 stride-2 transposed convolutions (256, 128, 64, 32, 16, 1), each followed
  by ReLU then batch norm, concatenated after the matching encoder output (skip first);
  dropout (0.5 on the first three) is inactive at inference;
- a 4x4 convolution with dilation 2 to two channels, sigmoid: the mask, times the input.
Keras layers pad "same": for stride 2 on even sizes that is 1 before and 2 after, which
PyTorch cannot express, so the padding (and the transposed convolutions' crop) is explicit.
Keras batch norm uses epsilon 1e-3 and, at inference, the moving statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

ENCODER_FILTERS = (16, 32, 64, 128, 256, 512)
DECODER_FILTERS = (256, 128, 64, 32, 16, 1)
KERNEL = 5
INPUT_CHANNELS = 2  # stereo magnitudes
KERAS_BATCH_NORM_EPSILON = 1e-3
LEAKY_SLOPE = 0.2
# Keras "same" padding of a stride-2 5x5 convolution on an even size: (before, after).
SAME_PAD = (1, 2)


class FrozenBatchNorm(nn.Module):
    """Inference-time batch norm as a per-channel affine map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def set_from_keras(self, gamma, beta, mean, variance) -> None:  # type: ignore[no-untyped-def]
        scale = gamma / np.sqrt(variance + KERAS_BATCH_NORM_EPSILON)
        self.scale.copy_(torch.from_numpy(np.asarray(scale, np.float32)))
        self.shift.copy_(torch.from_numpy(np.asarray(beta - mean * scale, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


class StemUNet(nn.Module):
    """One stem's network: stereo magnitudes (B, 2, T, F) in, estimated magnitudes out."""

    def __init__(self) -> None:
        super().__init__()
        channels = (INPUT_CHANNELS, *ENCODER_FILTERS)
        self.encoder = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], KERNEL, stride=2) for i in range(6)
        )
        self.encoder_norms = nn.ModuleList(FrozenBatchNorm(c) for c in ENCODER_FILTERS)
        decoder_inputs = (512, 512, 256, 128, 64, 32)  # previous output + skip, concatenated
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(decoder_inputs[i], DECODER_FILTERS[i], KERNEL, stride=2)
            for i in range(6)
        )
        self.decoder_norms = nn.ModuleList(FrozenBatchNorm(c) for c in DECODER_FILTERS)
        self.mask = nn.Conv2d(1, INPUT_CHANNELS, 4, dilation=2, padding=3)

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        skips = []
        x = magnitude
        for conv, norm in zip(self.encoder, self.encoder_norms, strict=True):
            raw = conv(functional.pad(x, (*SAME_PAD, *SAME_PAD)))
            skips.append(raw)
            x = functional.leaky_relu(norm(raw), LEAKY_SLOPE)
        x = skips.pop()  # the decoder starts from the last convolution's raw output
        layers = zip(self.decoder, self.decoder_norms, strict=True)
        for index, (deconv, norm) in enumerate(layers):
            full = deconv(x)
            height, width = x.shape[-2] * 2, x.shape[-1] * 2
            up = full[..., SAME_PAD[0] : SAME_PAD[0] + height, SAME_PAD[0] : SAME_PAD[0] + width]
            x = norm(functional.relu(up))
            if index < 5:
                x = torch.cat([skips.pop(), x], dim=1)
        return torch.sigmoid(self.mask(x)) * magnitude

    def load_keras_variables(self, variables: dict[str, np.ndarray], names: KerasNames) -> None:
        """Copies one stem's variables, by Keras layer name, checking every shape."""

        def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            value = variables[name]
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape}")
            # Keras kernels are (kh, kw, in, out) for Conv2D and (kh, kw, out, in) for
            # Conv2DTranspose; PyTorch wants (out, in, kh, kw) and (in, out, kh, kw): the same
            # permutation for both.
            array = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

        def load_conv(module: nn.Module, layer: str) -> None:
            weight = module.weight
            keras_shape = (*weight.shape[2:], weight.shape[1], weight.shape[0])
            module.weight.data.copy_(tensor(f"{layer}/kernel", keras_shape))
            module.bias.data.copy_(tensor(f"{layer}/bias", (weight.shape[0],)))

        def load_deconv(module: nn.Module, layer: str) -> None:
            weight = module.weight  # (in, out, kh, kw)
            keras_shape = (*weight.shape[2:], weight.shape[1], weight.shape[0])
            module.weight.data.copy_(tensor(f"{layer}/kernel", keras_shape))
            module.bias.data.copy_(tensor(f"{layer}/bias", (weight.shape[1],)))

        def load_norm(module: FrozenBatchNorm, layer: str) -> None:
            size = (module.scale.shape[0],)
            module.set_from_keras(
                *(tensor(f"{layer}/{part}", size).numpy() for part in
                  ("gamma", "beta", "moving_mean", "moving_variance"))  # fmt: skip
            )

        for module, layer in zip(self.encoder, names.convs[:6], strict=True):
            load_conv(module, layer)
        load_conv(self.mask, names.convs[6])
        for module, layer in zip(self.decoder, names.deconvs, strict=True):
            load_deconv(module, layer)
        norms = [*self.encoder_norms, *self.decoder_norms]
        for module, layer in zip(norms, names.norms, strict=True):
            load_norm(module, layer)


class KerasNames:
    """Keras names one stem's layers got, in creation order: stem i's layers follow stem i-1's.

    Per stem: 7 Conv2D (six encoder, then the mask), 6 Conv2DTranspose, 12 BatchNormalization.
    """

    def __init__(self, stem_index: int) -> None:
        def name(base: str, index: int) -> str:
            return base if index == 0 else f"{base}_{index}"

        self.convs = [name("conv2d", stem_index * 7 + i) for i in range(7)]
        self.deconvs = [name("conv2d_transpose", stem_index * 6 + i) for i in range(6)]
        self.norms = [name("batch_normalization", stem_index * 12 + i) for i in range(12)]

    def variables(self) -> list[str]:
        names = [f"{layer}/{part}" for layer in self.convs + self.deconvs
                 for part in ("kernel", "bias")]  # fmt: skip
        names += [f"{layer}/{part}" for layer in self.norms
                  for part in ("gamma", "beta", "moving_mean", "moving_variance")]  # fmt: skip
        return names
