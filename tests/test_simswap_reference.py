"""SimSwap networks and checkpoints against a reference written in the official code's structure.

The reference classes below follow the official modules class by class and layer by layer
(`models/fs_networks.py`, `models/fs_networks_512.py`, `models/arcface_models.py`), with the
official class names. The ArcFace ones are also written out as a source file under each
official module name in a temporary directory, so that `torch.save` pickles them exactly as
the official files were pickled: named `models.arcface_models.*` (SimSwap's file) or
`models.*` (InsightFace-v2's training checkpoint), with each class's source recorded in
torch's legacy format. Other SimSwap tests import the checkpoint builders from here.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import sys
import tempfile
import types
import warnings
import zipfile
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
        self.cos_m, self.sin_m = math.cos(margin_m), math.sin(margin_m)
        self.th = math.cos(math.pi - margin_m)
        self.mm = math.sin(math.pi - margin_m) * margin_m


def official_identity(network: ResNet, crops: torch.Tensor) -> torch.Tensor:
    """test_video_swapsingle.py: ToTensor, Normalize(ImageNet), interpolate to 112, normalize."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    img_id_downsample = F.interpolate((crops - mean) / std, size=(112, 112))
    return F.normalize(network(img_id_downsample), p=2, dim=1)


# --- Files in the official formats -------------------------------------------------------------


# InsightFace-v2 (2019, torch 1.x) saved the older file from its top-level `models.py`;
# SimSwap's own file pickles the network from `models/arcface_models.py`.
TRAINING_MODULE = "models"
SIMSWAP_MODULE = "models.arcface_models"
# form -> (module the classes are pickled from, torch's legacy format: records class sources)
ARCFACE_FORMS = {
    "whole_module": (SIMSWAP_MODULE, False),
    "whole_module_legacy": (SIMSWAP_MODULE, True),
    "training_dict": (TRAINING_MODULE, True),
}


def _official_arcface_source() -> str:
    header = "import math\n\nimport torch\nfrom torch import nn\n\n\n"
    parts = (conv3x3, SEBlock, IRBlock, ResNet, ArcMarginModel)
    return header + "\n\n".join(inspect.getsource(part) for part in parts)


def _drop_modules(top: str) -> dict[str, types.ModuleType]:
    names = [name for name in sys.modules if name == top or name.startswith(f"{top}.")]
    return {name: sys.modules.pop(name) for name in names}


@contextlib.contextmanager
def official_arcface_code(module_name: str) -> Iterator[types.ModuleType]:
    """The reference ArcFace classes importable as `module_name` from a real file, then gone."""
    top = module_name.split(".")[0]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        source = root.joinpath(*module_name.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        for package in source.relative_to(root).parents[:-1]:
            (root / package / "__init__.py").touch()
        source.write_text(_official_arcface_source())
        earlier = _drop_modules(top)
        sys.path.insert(0, directory)
        importlib.invalidate_caches()
        try:
            yield importlib.import_module(module_name)
        finally:
            sys.path.remove(directory)
            _drop_modules(top)
            sys.modules.update(earlier)


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


def save_official_arcface(path: Path, form: str = "whole_module", seed: int = 0) -> nn.Module:
    """Writes an ArcFace file as the official code did; returns the network it holds.

    `whole_module`: the network pickled whole (torch >= 1.6 zip format, no class sources);
    `whole_module_legacy`: the same in torch's legacy format; `training_dict`: InsightFace-v2's
    `train.py` checkpoint, `DataParallel` network and head plus SGD, in the legacy format.
    """
    module_name, legacy = ARCFACE_FORMS[form]
    path.parent.mkdir(parents=True, exist_ok=True)
    with official_arcface_code(module_name) as official:
        torch.manual_seed(seed)
        network = official.ResNet(official.IRBlock, list(SMALL_ARCFACE_LAYERS), use_se=True)
        randomise_batch_norms(network, seed)
        content: object = network
        if form == "training_dict":
            model = nn.DataParallel(network)
            metric_fc = nn.DataParallel(official.ArcMarginModel())
            optimizer = torch.optim.SGD(
                [{"params": model.parameters()}, {"params": metric_fc.parameters()}],
                lr=0.1,
                momentum=0.9,
                weight_decay=5e-4,
            )
            content = {
                "epoch": 12,
                "epochs_since_improvement": 0,
                "acc": 99.2,
                "model": model,
                "metric_fc": metric_fc,
                "optimizer": optimizer,
            }
        torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return network


def pickled_bytes(path: Path) -> bytes:
    """The pickle stream of a torch file: `data.pkl` of the zip format, else the whole file."""
    if not zipfile.is_zipfile(path):
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        name = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
        return archive.read(name)


def save_official_generator(network: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)  # official BaseModel.save_network


def build_models_dir(models_dir: Path, resolutions=(224,), seed: int = 0) -> Path:
    """A models directory with random weights in the official formats, and its manifest."""
    root = models_dir
    save_official_arcface(root / files.ARCFACE.path, seed=seed)
    for resolution in resolutions:
        generator = randomise_batch_norms(official_generator(resolution), seed + resolution)
        save_official_generator(generator, root / files.GENERATORS[resolution].path)
    record_files(root, files.ALL_FILES)
    return root


# --- Tests -------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("form", ARCFACE_FORMS)
def test_arcface_loads_every_published_form_without_the_official_code(form, tmp_path):
    path = tmp_path / "arcface_checkpoint.tar"
    original = save_official_arcface(path, form, seed=1)
    module_name, legacy = ARCFACE_FORMS[form]
    pickled = pickled_bytes(path)
    assert f"{module_name}\nResNet\n".encode() in pickled, "pickled under the official name"
    assert (b"class IRBlock(nn.Module):" in pickled) == legacy, "legacy files record sources"
    assert not any(name.split(".")[0] == "models" for name in sys.modules), "not importable"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = load_arcface(path)
    assert [str(warning.message) for warning in caught] == []
    assert set(ours.state_dict()) == set(original.state_dict())
    crops = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = official_identity(original, crops)
        embedding = identity_embedding(ours, crops)
    assert embedding.shape == (2, 512)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    assert float((embedding - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("form", ["whole_module", "training_dict"])
def test_arcface_converts_once_to_a_plain_state_dict(form, tmp_path):
    pickled = tmp_path / "arcface_checkpoint.tar"
    original = save_official_arcface(pickled, form)
    converted = tmp_path / "arcface.pth"
    convert_arcface(pickled, converted)
    state = torch.load(converted, weights_only=True)
    assert set(state) == set(original.state_dict())
    assert set(load_arcface(converted).state_dict()) == set(state)


class _RunsCode:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.remove, (str(self.sentinel),))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_arcface_loader_refuses_to_run_code_named_in_the_file(legacy, tmp_path):
    sentinel = tmp_path / "still-here"
    sentinel.write_text("x")
    path = tmp_path / "arcface_checkpoint.tar"
    torch.save({"model": _RunsCode(sentinel)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="remove, which is not an allowed class"):
        load_arcface(path)
    assert sentinel.exists()


def test_arcface_loader_refuses_an_official_module_class_outside_the_allow_list(tmp_path):
    path = tmp_path / "arcface_checkpoint.tar"
    with official_arcface_code(TRAINING_MODULE) as official:
        # InsightFace-v2's models.py has more classes (MobileNet...); only the IR-SE ones load.
        official.MobileNet = type("MobileNet", (official.SEBlock,), {"__module__": TRAINING_MODULE})
        torch.save({"model": official.MobileNet(64)}, path)
    with pytest.raises(CheckpointError, match="models.MobileNet, which is not an allowed class"):
        load_arcface(path)


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
