"""The SimSwap files, laid out under `models/simswap/` exactly as in the official repository.

Keeping the official layout means an existing SimSwap checkout's files can be copied (or the
folder linked) as they are. Sources are the ones the official README and preparation guide
publish; SHA-256 digests are not published, so none is pinned here: `make fetch-weights`
records the digest of what it downloaded in `models/manifest.json`, and start-up checks it.
"""

from __future__ import annotations

from services.shared.model_files import ModelFile

ROOT = "simswap"
RELEASES = "https://github.com/neuralchen/SimSwap/releases/download"
SIMSWAP_LICENCE = (
    "SimSwap: CC BY-NC 4.0, academic and non-commercial use only "
    "(https://github.com/neuralchen/SimSwap#license)"
)
INSIGHTFACE_LICENCE = (
    "insightface pretrained models: non-commercial research use only "
    "(https://github.com/deepinsight/insightface#license)"
)

ARCFACE = ModelFile(
    path=f"{ROOT}/arcface_model/arcface_checkpoint.tar",
    source=f"{RELEASES}/1.0/arcface_checkpoint.tar",
    licence=SIMSWAP_LICENCE,
)
GENERATOR_224 = ModelFile(
    path=f"{ROOT}/checkpoints/people/latest_net_G.pth",
    source=f"{RELEASES}/1.0/checkpoints.zip",
    licence=SIMSWAP_LICENCE,
    archive_member="people/latest_net_G.pth",
)
GENERATOR_512 = ModelFile(
    path=f"{ROOT}/checkpoints/512/550000_net_G.pth",
    source=f"{RELEASES}/512_beta/512.zip",
    licence=SIMSWAP_LICENCE,
    archive_member="512/550000_net_G.pth",
)
# The antelope pack is published as a OneDrive folder (docs/guidance/preparation.md): a person
# downloads antelope.zip and unzips it; without it the embedded dlib detector stands in.
DETECTOR = ModelFile(
    path=f"{ROOT}/insightface_func/models/antelope/scrfd_10g_bnkps.onnx",
    source=(
        "https://onedrive.live.com/?authkey=%21ADJ0aAOSsc90neY&cid=4A83B6B633B029CC"
        "&id=4A83B6B633B029CC%215837&parId=4A83B6B633B029CC%215834&action=locate"
    ),
    licence=INSIGHTFACE_LICENCE,
    required=False,
    direct_download=False,
)

GENERATORS = {224: GENERATOR_224, 512: GENERATOR_512}


def files_for(resolution: int) -> tuple[ModelFile, ...]:
    return (ARCFACE, GENERATORS[resolution], DETECTOR)


ALL_FILES = (ARCFACE, GENERATOR_224, GENERATOR_512, DETECTOR)
