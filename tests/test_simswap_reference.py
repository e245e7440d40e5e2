"""SimSwap networks and checkpoints against a reference written in the official code's structure.

The reference classes below follow the official modules class by class and layer by layer
(`models/fs_networks.py`, `models/fs_networks_512.py`, `models/arcface_models.py`), with the
official class names. Registered under the official module path `models.arcface_models`
(only inside these tests, through sys.modules), they also produce ArcFace files in the
official pickled formats. Other SimSwap tests import the checkpoint builders from here.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from services.faceswap.simswap import files
from services.faceswap.simswap.arcface import identity_embedding
from services.faceswap.simswap.checkpoints import (
    CheckpointError,
    convert_arcface,
    load_arcface,
    load_generator,
)
from services.shared.model_files import record_files

OFFICIAL_MODULE = "models.arcface_models"
SMALL_ARCFACE_LAYERS = (1, 1, 1, 1)


# --- Reference: models/fs_networks.py and models/fs_networks_512.py ----------------------------


class InstanceNorm(nn.Module):
    def __init__(self, epsilon=1e-8):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x):
        x = x - torch.mean(x, (2, 3), True)
        tmp = torch.rsqrt(torch.mean(torch.mul(x, x), (2, 3), True) + self.epsilon)
        return x * tmp


class ApplyStyle(nn.Module):
    def __init__(self, latent_size, channels):
        super().__init__()
        self.linear = nn.Linear(latent_size, channels * 2)

    def forward(self, x, latent):
        style = self.linear(latent).view([-1, 2, x.size(1), 1, 1])
        return x * (style[:, 0] * 1 + 1.0) + style[:, 1] * 1


class ResnetBlock_Adain(nn.Module):  # noqa: N801 - the official name
    def __init__(self, dim, latent_size, activation):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0), InstanceNorm()
        )
        self.style1 = ApplyStyle(latent_size, dim)
        self.act1 = activation
        self.conv2 = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0), InstanceNorm()
        )
        self.style2 = ApplyStyle(latent_size, dim)

    def forward(self, x, dlatents_in_slice):
        y = self.conv1(x)
        y = self.style1(y, dlatents_in_slice)
        y = self.act1(y)
        y = self.conv2(y)
        y = self.style2(y, dlatents_in_slice)
        return x + y


def _official_up(cin, cout, activation):
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(cout),
        activation,
    )


def _official_down(cin, cout, activation):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(cout), activation
    )


class Generator_Adain_Upsample(nn.Module):  # noqa: N801 - the official name
    """fs_networks.py (crop_size 224) or, with_down0_up0, fs_networks_512.py; deep=False."""

    def __init__(self, input_nc, output_nc, latent_size, n_blocks=6, with_down0_up0=False):
        super().__init__()
        activation = nn.ReLU(True)
        self.with_down0_up0 = with_down0_up0
        stem = 32 if with_down0_up0 else 64
        self.first_layer = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, stem, kernel_size=7, padding=0),
            nn.BatchNorm2d(stem),
            activation,
        )
        if with_down0_up0:
            self.down0 = _official_down(32, 64, activation)
        self.down1 = _official_down(64, 128, activation)
        self.down2 = _official_down(128, 256, activation)
        self.down3 = _official_down(256, 512, activation)
        self.BottleNeck = nn.Sequential(
            *[ResnetBlock_Adain(512, latent_size, activation) for _ in range(n_blocks)]
        )
        self.up3 = _official_up(512, 256, activation)
        self.up2 = _official_up(256, 128, activation)
        self.up1 = _official_up(128, 64, activation)
        if with_down0_up0:
            self.up0 = _official_up(64, 32, activation)
        self.last_layer = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(stem, output_nc, kernel_size=7, padding=0), nn.Tanh()
        )

    def forward(self, input, dlatents):
        x = self.first_layer(input)
        if self.with_down0_up0:
            x = self.down0(x)
        x = self.down1(x)
        x = self.down2(x)
        x = self.down3(x)
        for i in range(len(self.BottleNeck)):
            x = self.BottleNeck[i](x, dlatents)
        x = self.up3(x)
        x = self.up2(x)
        x = self.up1(x)
        if self.with_down0_up0:
            x = self.up0(x)
        x = self.last_layer(x)
        return (x + 1) / 2


def official_generator(resolution: int) -> Generator_Adain_Upsample:
    return Generator_Adain_Upsample(3, 3, 512, n_blocks=9, with_down0_up0=resolution == 512)


# --- Reference: models/arcface_models.py -------------------------------------------------------


class SEBlock(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction),
            nn.PReLU(),
            nn.Linear(channel // reduction, channel),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, use_se=True):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, inplanes)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.use_se = use_se
        if self.use_se:
            self.se = SEBlock(planes)

    def forward(self, x):
        residual = x
        out = self.bn0(x)
        out = self.conv1(out)
        out = self.bn1(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.use_se:
            out = self.se(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.prelu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, use_se=True):
        self.inplanes = 64
        self.use_se = use_se
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.bn3 = nn.BatchNorm1d(512)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [block(self.inplanes, planes, stride, downsample, use_se=self.use_se)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, use_se=self.use_se))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        x = x.view(x.size(0), -1)
        return self.bn3(self.fc(x))


class ArcMarginModel(nn.Module):
    """The training head the older checkpoint carries (weights: classes x 512)."""

    def __init__(self, num_classes=10, emb_size=512, margin_m=0.5, margin_s=64.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, emb_size))
        nn.init.xavier_uniform_(self.weight)
        self.easy_margin = False
        self.m, self.s = margin_m, margin_s


def official_arcface(layers=SMALL_ARCFACE_LAYERS) -> ResNet:
    return ResNet(IRBlock, list(layers), use_se=True)


def official_identity(network: ResNet, crops: torch.Tensor) -> torch.Tensor:
    """test_video_swapsingle.py: ToTensor, Normalize(ImageNet), interpolate to 112, normalize."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    img_id_downsample = F.interpolate((crops - mean) / std, size=(112, 112))
    return F.normalize(network(img_id_downsample), p=2, dim=1)


# --- Files in the official formats -------------------------------------------------------------


def _register_official_module() -> None:
    """Puts the reference ArcFace classes at the official import path, as pickle records it."""
    package = sys.modules.get("models") or types.ModuleType("models")
    package.__path__ = []
    module = types.ModuleType(OFFICIAL_MODULE)
    for cls in (ResNet, IRBlock, SEBlock, ArcMarginModel):
        cls.__module__ = OFFICIAL_MODULE
        setattr(module, cls.__name__, cls)
    sys.modules["models"] = package
    sys.modules[OFFICIAL_MODULE] = module


def _unregister_official_module() -> None:
    sys.modules.pop(OFFICIAL_MODULE, None)
    if getattr(sys.modules.get("models"), "__path__", None) == []:
        sys.modules.pop("models", None)


def randomise_batch_norms(network: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics, so eval-mode batch norm is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(1 + torch.randn(size, generator=generator) * 0.1)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
    return network.eval()


def save_official_arcface(network: ResNet, path: Path, form: str = "module") -> None:
    """`module`: the published whole pickled module; `training_dict`: the older checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _register_official_module()
    try:
        if form == "module":
            torch.save(network, path)
        else:
            wrapped = nn.DataParallel(network)
            optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
            checkpoint = {
                "epoch": 12,
                "epochs_since_improvement": 0,
                "model": wrapped,
                "metric_fc": ArcMarginModel(),
                "optimizer": optimizer,
            }
            # A 2019-era file: torch's legacy (non-zip) serialisation.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "couldn't retrieve source"
                torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    finally:
        _unregister_official_module()


def save_official_generator(network: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)  # official BaseModel.save_network


def build_models_dir(models_dir: Path, resolutions=(224,), seed: int = 0) -> Path:
    """A models directory with random weights in the official formats, and its manifest."""
    torch.manual_seed(seed)
    root = models_dir
    arcface = randomise_batch_norms(official_arcface(), seed)
    save_official_arcface(arcface, root / files.ARCFACE.path)
    for resolution in resolutions:
        generator = randomise_batch_norms(official_generator(resolution), seed + resolution)
        save_official_generator(generator, root / files.GENERATORS[resolution].path)
    record_files(root, files.ALL_FILES)
    return root


# --- Tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_arcface() -> ResNet:
    torch.manual_seed(1)
    return randomise_batch_norms(official_arcface(), 1)


@pytest.fixture(scope="module")
def reference_generators() -> Iterator[dict[int, Generator_Adain_Upsample]]:
    torch.manual_seed(2)
    yield {r: randomise_batch_norms(official_generator(r), r) for r in (224, 512)}


@pytest.mark.parametrize("resolution", [224, 512])
def test_generator_loads_the_official_state_dict_and_matches_the_reference(
    resolution, reference_generators, tmp_path
):
    reference = reference_generators[resolution]
    path = tmp_path / f"{resolution}_net_G.pth"
    save_official_generator(reference, path)
    ours = load_generator(path, resolution)
    assert list(ours.state_dict()) == list(reference.state_dict())

    torch.manual_seed(3)
    crops = torch.rand(1, 3, resolution, resolution)
    identity = F.normalize(torch.randn(1, 512), dim=1)
    with torch.inference_mode():
        expected = reference(crops, identity)
        output = ours(crops, identity)
        again = ours(crops, identity)
    assert output.shape == (1, 3, resolution, resolution)
    assert 0.0 <= float(output.min()) and float(output.max()) <= 1.0
    assert torch.equal(output, again), "inference is deterministic"
    assert float((output - expected).abs().max()) <= 1e-4


def test_generator_batches_give_the_same_result_as_single_frames(reference_generators, tmp_path):
    path = tmp_path / "latest_net_G.pth"
    save_official_generator(reference_generators[224], path)
    ours = load_generator(path, 224)
    torch.manual_seed(4)
    crops = torch.rand(2, 3, 224, 224)
    identities = F.normalize(torch.randn(2, 512), dim=1)
    with torch.inference_mode():
        batched = ours(crops, identities)
        single = torch.cat([ours(crops[i : i + 1], identities[i : i + 1]) for i in range(2)])
    assert float((batched - single).abs().max()) <= 1e-4


@pytest.mark.parametrize("form", ["module", "training_dict"])
def test_arcface_loads_both_published_forms_without_the_official_code(
    form, reference_arcface, tmp_path
):
    path = tmp_path / "arcface_checkpoint.tar"
    save_official_arcface(reference_arcface, path, form)
    assert OFFICIAL_MODULE not in sys.modules, "the official module path is not importable"

    ours = load_arcface(path)
    assert set(ours.state_dict()) == set(reference_arcface.state_dict())
    crops = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = official_identity(reference_arcface, crops)
        embedding = identity_embedding(ours, crops)
    assert embedding.shape == (2, 512)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    assert float((embedding - expected).abs().max()) <= 1e-4


def test_arcface_converts_once_to_a_plain_state_dict(reference_arcface, tmp_path):
    pickled = tmp_path / "arcface_checkpoint.tar"
    save_official_arcface(reference_arcface, pickled)
    converted = tmp_path / "arcface.pth"
    convert_arcface(pickled, converted)
    state = torch.load(converted, weights_only=True)
    assert set(state) == set(reference_arcface.state_dict())
    assert set(load_arcface(converted).state_dict()) == set(state)


class _RunsCode:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.remove, (str(self.sentinel),))


def test_arcface_loader_refuses_to_run_code_named_in_the_file(tmp_path):
    sentinel = tmp_path / "still-here"
    sentinel.write_text("x")
    path = tmp_path / "arcface_checkpoint.tar"
    torch.save({"model": _RunsCode(sentinel)}, path)
    with pytest.raises(CheckpointError, match="not an allowed class"):
        load_arcface(path)
    assert sentinel.exists()


def test_generator_with_wrong_shapes_or_extra_keys_is_refused(reference_generators, tmp_path):
    state = reference_generators[224].state_dict()
    extra = tmp_path / "extra.pth"
    torch.save({**state, "unexpected.weight": torch.zeros(1)}, extra)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_generator(extra, 224)
    # The 224 weights do not fit the 512 network (its stem has 32 channels).
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_generator(wrong, 512)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(wrong.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_generator(truncated, 224)
