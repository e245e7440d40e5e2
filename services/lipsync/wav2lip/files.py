"""The Wav2Lip files, under `models/wav2lip/` in the official repository's layout.

The generator checkpoints are published as links on the official README (cloud folders a
person downloads by hand); S3FD is face-alignment's public file. No SHA-256 is published:
`models/manifest.json` records the digest of what was placed (see README, Lipsync service).
"""

from __future__ import annotations

from services.shared.model_files import ModelFile

ROOT = "wav2lip"
WAV2LIP_LICENCE = (
    "Wav2Lip: personal, research and non-commercial use only; commercial use needs a licence "
    "from the authors (https://github.com/Rudrabha/Wav2Lip#license-and-citation)"
)
S3FD_LICENCE = "S3FD weights from face-alignment (BSD-3-Clause, https://github.com/1adrianb/face-alignment)"
README = "https://github.com/Rudrabha/Wav2Lip#getting-the-weights"

CHECKPOINTS = {
    "wav2lip": ModelFile(
        path=f"{ROOT}/checkpoints/wav2lip.pth", source=README, licence=WAV2LIP_LICENCE,
        direct_download=False,
    ),
    "wav2lip_gan": ModelFile(
        path=f"{ROOT}/checkpoints/wav2lip_gan.pth", source=README, licence=WAV2LIP_LICENCE,
        direct_download=False,
    ),
}  # fmt: skip
DETECTOR = ModelFile(
    path=f"{ROOT}/face_detection/detection/sfd/s3fd.pth",
    source="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
    licence=S3FD_LICENCE,
    required=False,
)


def files_for(checkpoint: str) -> tuple[ModelFile, ...]:
    return (CHECKPOINTS[checkpoint], DETECTOR)
