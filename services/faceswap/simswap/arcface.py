"""The identity network SimSwap uses: an IR-SE ResNet ArcFace (official `models/arcface_models.py`).

Parameter names follow the official `ResNet` / `IRBlock` / `SEBlock` so the published weights
load with `strict=True`. The number of blocks per stage is read from the checkpoint's keys
rather than assumed, since the published file does not say which depth it is.

`identity_embedding` reproduces the official inference path (test_*_swapsingle.py): the
aligned crop as RGB in [0, 1], ImageNet mean/std, `F.interpolate(size=(112, 112))` with its
default nearest mode, the network, then `F.normalize` to unit length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_SIZE = 512
INPUT_SIDE = 112
# ImageNet statistics, as in the official transformer_Arcface and util/norm.py.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_CHANNELS = (64, 128, 256, 512)
# 112 px in, an unpadded 3x3 stem, a 2x2 max pool and three stride-2 stages: 7 x 7 at the end.
FINAL_SIDE = 7
SE_REDUCTION = 16


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.PReLU(),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        weights = self.fc(self.avg_pool(x).view(batch, channels))
        return x * weights.view(batch, channels, 1, 1)


class ImprovedResidualBlock(nn.Module):
    """BN - conv - BN - PReLU - conv - BN (- SE), plus the shortcut; one PReLU for both uses."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, use_se: bool = True
    ) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.prelu = nn.PReLU()
        self.conv2 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels) if use_se else None
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + shortcut)


class ArcFaceResNet(nn.Module):
    def __init__(self, blocks_per_stage: Sequence[int], use_se: bool = True) -> None:
        super().__init__()
        self.blocks_per_stage = tuple(blocks_per_stage)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        in_channels = 64
        for index, (channels, count) in enumerate(
            zip(STAGE_CHANNELS, blocks_per_stage, strict=True)
        ):
            stride = 1 if index == 0 else 2
            blocks = [ImprovedResidualBlock(in_channels, channels, stride, use_se)]
            blocks += [
                ImprovedResidualBlock(channels, channels, 1, use_se) for _ in range(count - 1)
            ]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = channels
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc = nn.Linear(512 * FINAL_SIDE * FINAL_SIDE, EMBEDDING_SIZE)
        self.bn3 = nn.BatchNorm1d(EMBEDDING_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        for stage in range(len(STAGE_CHANNELS)):
            x = getattr(self, f"layer{stage + 1}")(x)
        x = self.dropout(self.bn2(x))
        return self.bn3(self.fc(x.flatten(1)))


def architecture_of(state_dict: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], bool]:
    """Blocks per stage and whether blocks carry squeeze-excitation, read from the key names."""
    counts = []
    for stage in range(1, 5):
        indices = {
            int(match.group(1))
            for key in state_dict
            if (match := re.match(rf"layer{stage}\.(\d+)\.", key))
        }
        if not indices:
            raise ValueError(f"the checkpoint has no layer{stage} blocks: not an IR-SE ResNet")
        counts.append(max(indices) + 1)
    use_se = any(".se." in key for key in state_dict)
    return tuple(counts), use_se


def identity_embedding(network: ArcFaceResNet, crops: torch.Tensor) -> torch.Tensor:
    """Unit-length identity embeddings (N x 512) of aligned RGB crops in [0, 1] (N x 3 x S x S)."""
    mean = crops.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = crops.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (crops - mean) / std
    resized = F.interpolate(normalised, size=(INPUT_SIDE, INPUT_SIDE))
    return F.normalize(network(resized), p=2, dim=1)
