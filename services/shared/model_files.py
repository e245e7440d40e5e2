"""The weights a neural engine needs, where they come from, and whether they are intact.

Each engine lists its files as ModelFile entries (a path under the models directory, the
published source, the licence, and the SHA-256 when it is known). The models directory holds
a `manifest.json` that records, per file, the SHA-256 it had when it was fetched or placed
by hand (`record_files`); at start-up `check_files` refuses a missing, empty or altered file
with a message that says what to do.

    {"files": {"simswap/checkpoints/people/latest_net_G.pth":
                 {"sha256": "...", "licence": "...", "source": "https://..."}}}
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.shared.errors import EngineNotReady

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the models directory, "/"-separated
    source: str  # where the file is published (a URL, or a page to download it from by hand)
    licence: str
    sha256: str | None = None  # the published file's digest, when known
    required: bool = True
    archive_member: str | None = None  # the source is a zip archive: the member to extract
    direct_download: bool = True  # False: the source is a page a person must visit


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(models_dir: Path) -> dict[str, dict]:
    manifest = models_dir / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    try:
        files = json.loads(manifest.read_text()).get("files", {})
    except (ValueError, AttributeError) as error:
        raise EngineNotReady(f"{manifest} is not valid JSON: {error}") from None
    if not isinstance(files, dict):
        raise EngineNotReady(f"{manifest}: 'files' must map paths to entries")
    return files


def record_files(models_dir: Path, files: Sequence[ModelFile]) -> dict[str, str]:
    """Writes the present files' SHA-256 (and source, licence) into the manifest."""
    entries = read_manifest(models_dir)
    recorded = {}
    for model_file in files:
        path = models_dir / model_file.path
        if not path.is_file():
            continue
        digest = sha256_of(path)
        entries[model_file.path] = {
            "sha256": digest,
            "licence": model_file.licence,
            "source": model_file.source,
        }
        recorded[model_file.path] = digest
    models_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"files": dict(sorted(entries.items()))}
    (models_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return recorded


def check_files(models_dir: Path, files: Sequence[ModelFile]) -> dict[str, Path]:
    """The present files by relative path; EngineNotReady if a required one is missing or any
    present one is empty or differs from its known SHA-256."""
    manifest = read_manifest(models_dir)
    present = {}
    for model_file in files:
        path = models_dir / model_file.path
        if not path.is_file():
            if model_file.required:
                raise EngineNotReady(
                    f"{path} is missing: run `make fetch-weights` or place the file by hand "
                    f"(from {model_file.source}; see README, SimSwap engine)"
                )
            continue
        if path.stat().st_size == 0:
            raise EngineNotReady(f"{path} is empty: a failed download? Fetch it again.")
        expected = model_file.sha256 or manifest.get(model_file.path, {}).get("sha256")
        if expected:
            actual = sha256_of(path)
            if actual != expected:
                raise EngineNotReady(
                    f"{path} has SHA-256 {actual}, expected {expected}: the file is corrupt "
                    "or not the published one; fetch it again"
                )
        else:
            log.warning("%s has no known SHA-256: record it in %s", path, MANIFEST_NAME)
        present[model_file.path] = path
    return present
