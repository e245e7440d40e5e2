"""The Wav2Lip generator for 96 x 96 faces, with the official module names, so that the
published `wav2lip.pth` and `wav2lip_gan.pth` state dicts load key for key.

Inputs: an audio window (B, 1, 80, 16) of the normalised mel spectrogram, and a face
(B, 6, 96, 96) in [0, 1]: the BGR crop with its lower half zeroed, then the BGR reference crop.
Output: the generated BGR face (B, 3, 96, 96) in [0, 1].

The layers are written as tables (channels in, channels out, kernel, stride, padding,
residual) read from the official `models/wav2lip.py`; the module tree they build is the
official one: `face_encoder_blocks`, `audio_encoder`, `face_decoder_blocks`, `output_block`,
each convolution a `conv_block` of (Conv2d or ConvTranspose2d, BatchNorm2d) then ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# (cin, cout, kernel, stride, padding, residual)
LayerSpec = tuple[int, int, int, int | tuple[int, int], int, bool]

FACE_SIZE = 96
MEL_BANDS = 80
MEL_WINDOW = 16

# Face encoder: 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1; each stage's output is kept for the skips.
FACE_ENCODER: tuple[tuple[LayerSpec, ...], ...] = (
    ((6, 16, 7, 1, 3, False),),
    ((16, 32, 3, 2, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True)),
    ((32, 64, 3, 2, 1, False), *[(64, 64, 3, 1, 1, True)] * 3),
    ((64, 128, 3, 2, 1, False), *[(128, 128, 3, 1, 1, True)] * 2),
    ((128, 256, 3, 2, 1, False), *[(256, 256, 3, 1, 1, True)] * 2),
    ((256, 512, 3, 2, 1, False), (512, 512, 3, 1, 1, True)),
    ((512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)),
)

# Audio encoder: 80 x 16 mel window -> 512 x 1 x 1.
AUDIO_ENCODER: tuple[LayerSpec, ...] = (
    (1, 32, 3, 1, 1, False), (32, 32, 3, 1, 1, True), (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False), (64, 64, 3, 1, 1, True), (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False), (128, 128, 3, 1, 1, True), (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False), (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False),
)  # fmt: skip

# Decoder stages: an optional transposed convolution (cin, cout, kernel, stride, padding,
# output_padding), then residual convolutions of `cout` channels; each stage's output is
# concatenated with the matching encoder stage's before the next stage.
TransposeSpec = tuple[int, int, int, int, int, int]
FACE_DECODER: tuple[tuple[TransposeSpec | None, int, int], ...] = (
    # (transpose, channels, residual convolutions); stage 0 is one 1x1 convolution instead.
    (None, 512, 0),
    ((1024, 512, 3, 1, 0, 0), 512, 1),
    ((1024, 512, 3, 2, 1, 1), 512, 2),
    ((768, 384, 3, 2, 1, 1), 384, 2),
    ((512, 256, 3, 2, 1, 1), 256, 2),
    ((320, 128, 3, 2, 1, 1), 128, 2),
    ((160, 64, 3, 2, 1, 1), 64, 2),
)
OUTPUT_CHANNELS_IN = 80  # the last decoder stage (64) with the first encoder stage (16)


class ConvBlock(nn.Module):
    """Convolution, batch norm, optional identity skip, ReLU (official `Conv2d`)."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        cin, cout, kernel, stride, padding, residual = spec
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class TransposeBlock(nn.Module):
    """Transposed convolution, batch norm, ReLU (official `Conv2dTranspose`)."""

    def __init__(self, spec: TransposeSpec) -> None:
        super().__init__()
        cin, cout, kernel, stride, padding, output_padding = spec
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _stack(specs: Sequence[LayerSpec]) -> nn.Sequential:
    return nn.Sequential(*(ConvBlock(spec) for spec in specs))


def _decoder_stage(transpose: TransposeSpec | None, channels: int, residuals: int) -> nn.Sequential:
    if transpose is None:
        return nn.Sequential(ConvBlock((channels, channels, 1, 1, 0, False)))
    layers: list[nn.Module] = [TransposeBlock(transpose)]
    layers += [ConvBlock((channels, channels, 3, 1, 1, True)) for _ in range(residuals)]
    return nn.Sequential(*layers)


class Wav2Lip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(_stack(stage) for stage in FACE_ENCODER)
        self.audio_encoder = _stack(AUDIO_ENCODER)
        self.face_decoder_blocks = nn.ModuleList(
            _decoder_stage(*stage) for stage in FACE_DECODER
        )
        self.output_block = nn.Sequential(
            ConvBlock((OUTPUT_CHANNELS_IN, 32, 3, 1, 1, False)),
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, mel_windows: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) mel windows and (B, 6, 96, 96) faces -> (B, 3, 96, 96) faces."""
        skips = []
        x = faces
        for stage in self.face_encoder_blocks:
            x = stage(x)
            skips.append(x)
        x = self.audio_encoder(mel_windows)
        for stage in self.face_decoder_blocks:
            x = torch.cat((stage(x), skips.pop()), dim=1)
        return self.output_block(x)
