"""SimSwap's generator (the official `Generator_Adain_Upsample`), for the 224 and 512 models.

Parameter names follow the official modules exactly (`first_layer.1.weight`,
`BottleNeck.3.style1.linear.bias`, `up1.1.weight`, ...) so the published state_dicts load
with `strict=True`. Both published models are built with `latent_size=512, n_blocks=9,
deep=False` (official `models/fs_model.py`); the 512 model (`models/fs_networks_512.py`) starts
with 32 channels and has one more stride-2 convolution (`down0`) and one more upsampling
stage (`up0`).

Input: the aligned crop, RGB in [0, 1], N x 3 x S x S (S = 224 or 512); identity: the
L2-normalised ArcFace embedding, N x 512. Output: the swapped crop, RGB in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_SIZE = 512
RESIDUAL_BLOCKS = 9
BOTTLENECK_CHANNELS = 512
# The official InstanceNorm's epsilon (fs_networks.py), added to the variance.
INSTANCE_NORM_EPSILON = 1e-8
RESOLUTIONS = (224, 512)


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over the spatial axes, with no learned affine."""

    def __init__(self, epsilon: float = INSTANCE_NORM_EPSILON) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=(2, 3), keepdim=True)
        variance = (centred * centred).mean(dim=(2, 3), keepdim=True)
        return centred * torch.rsqrt(variance + self.epsilon)


class ApplyStyle(nn.Module):
    """Identity injection: a linear map of the embedding to a per-channel scale and bias."""

    def __init__(self, latent_size: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_size, channels * 2)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        style = self.linear(latent).view(-1, 2, x.size(1), 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class AdaptiveResidualBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions, each instance-normalised, restyled by the identity."""

    def __init__(self, channels: int, latent_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), InstanceNorm()
        )
        self.style1 = ApplyStyle(latent_size, channels)
        self.act1 = nn.ReLU(True)
        self.conv2 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), InstanceNorm()
        )
        self.style2 = ApplyStyle(latent_size, channels)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.style1(self.conv1(x), latent))
        y = self.style2(self.conv2(y), latent)
        return x + y


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(True),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(True),
    )


class SimSwapGenerator(nn.Module):
    def __init__(self, resolution: int = 224) -> None:
        super().__init__()
        if resolution not in RESOLUTIONS:
            raise ValueError(f"SimSwap models exist for {RESOLUTIONS}, not {resolution}")
        self.resolution = resolution
        # The 512 model puts one more halving in front, so both reach 512 channels at 1/8 or
        # 1/16 of the input side with the same bottleneck.
        stem = 32 if resolution == 512 else 64
        self.first_layer = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, stem, 7), nn.BatchNorm2d(stem), nn.ReLU(True)
        )
        if resolution == 512:
            self.down0 = _down(32, 64)
        self.down1 = _down(64, 128)
        self.down2 = _down(128, 256)
        self.down3 = _down(256, BOTTLENECK_CHANNELS)
        self.BottleNeck = nn.Sequential(
            *[
                AdaptiveResidualBlock(BOTTLENECK_CHANNELS, LATENT_SIZE)
                for _ in range(RESIDUAL_BLOCKS)
            ]
        )
        self.up3 = _up(BOTTLENECK_CHANNELS, 256)
        self.up2 = _up(256, 128)
        self.up1 = _up(128, 64)
        if resolution == 512:
            self.up0 = _up(64, 32)
        self.last_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(stem, 3, 7), nn.Tanh())

    def forward(self, crop: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        x = self.first_layer(crop)
        if self.resolution == 512:
            x = self.down0(x)
        x = self.down3(self.down2(self.down1(x)))
        for block in self.BottleNeck:
            x = block(x, identity)
        x = self.up1(self.up2(self.up3(x)))
        if self.resolution == 512:
            x = self.up0(x)
        return (self.last_layer(x) + 1.0) / 2.0
