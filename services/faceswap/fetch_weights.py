"""Fetches the official SimSwap weights into the models directory and records their SHA-256.

    python -m services.faceswap.fetch_weights           # download what is missing
    python -m services.faceswap.fetch_weights --record  # only record files placed by hand
    python -m services.faceswap.fetch_weights --list    # what goes where, from where, licences

Sources are the ones SimSwap publishes (GitHub releases of neuralchen/SimSwap). The antelope
detector pack is published only as a OneDrive folder that needs a browser: download
antelope.zip by hand and unzip it as listed (without it, dlib's landmarks stand in). Connects
time out after a few seconds, so a machine without internet gets a clear error, not a hang.
A file with a published SHA-256 is checked against it; every fetched or recorded file's digest
goes into models/manifest.json, which the service checks at start.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from services.faceswap.config import FaceSwapSettings
from services.faceswap.simswap.files import ALL_FILES
from services.shared.model_files import ModelFile, record_files, sha256_of

CONNECT_TIMEOUT_SECONDS = 10.0
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    pass


def fetch(model_file: ModelFile, models_dir: Path, timeout: float) -> Path:
    """Downloads one file (extracting it from its zip when published in one) into place."""
    target = models_dir / model_file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        download = Path(scratch) / "download"
        _download(model_file.source, download, timeout)
        fetched = download
        if model_file.archive_member:
            fetched = _extract(download, model_file.archive_member)
        if model_file.sha256 and sha256_of(fetched) != model_file.sha256:
            raise FetchError(f"{model_file.source}: SHA-256 differs from the published one")
        shutil.move(str(fetched), target)  # only a complete, checked file lands in place
    return target


def _download(url: str, path: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "remind-fetch-weights"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FetchError(f"cannot download {url}: {reason}") from None


def _extract(archive: Path, member_suffix: str) -> Path:
    try:
        with zipfile.ZipFile(archive) as bundle:
            names = [name for name in bundle.namelist() if name.endswith(member_suffix)]
            if not names:
                raise FetchError(f"the archive has no {member_suffix}")
            extracted = archive.with_name("member")
            with bundle.open(names[0]) as source, open(extracted, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)
    except zipfile.BadZipFile as error:
        raise FetchError(f"the download is not a zip archive: {error}") from None
    return extracted


def _describe(models_dir: Path) -> None:
    for model_file in ALL_FILES:
        need = "required" if model_file.required else "optional"
        how = "" if model_file.direct_download else " (download by hand)"
        print(f"{models_dir / model_file.path}  [{need}]")
        print(f"    source{how}: {model_file.source}")
        if model_file.archive_member:
            print(f"    inside the archive at: {model_file.archive_member}")
        print(f"    licence: {model_file.licence}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.faceswap.fetch_weights")
    parser.add_argument("--models-dir", type=Path, default=FaceSwapSettings.load().models_path())
    parser.add_argument("--record", action="store_true", help="only record present files")
    parser.add_argument("--list", action="store_true", help="list files, sources, licences")
    parser.add_argument("--timeout", type=float, default=CONNECT_TIMEOUT_SECONDS)
    arguments = parser.parse_args(argv)
    models_dir: Path = arguments.models_dir
    if arguments.list:
        _describe(models_dir)
        return 0

    failures = []
    if not arguments.record:
        print("SimSwap weights are for non-commercial research use only (see --list).")
        for model_file in ALL_FILES:
            target = models_dir / model_file.path
            if target.is_file():
                print(f"present     {target}")
            elif not model_file.direct_download:
                print(f"by hand     {target}\n            from {model_file.source}")
            else:
                print(f"fetching    {model_file.source}", flush=True)
                try:
                    print(f"fetched     {fetch(model_file, models_dir, arguments.timeout)}")
                except FetchError as error:
                    failures.append(model_file)
                    print(f"FAILED      {error}", file=sys.stderr)
    for path, digest in record_files(models_dir, ALL_FILES).items():
        print(f"recorded    {path} sha256={digest}")
    if any(model_file.required for model_file in failures):
        print(
            "Some required SimSwap files could not be downloaded. Place them by hand as "
            "listed by --list, then run with --record. The service runs without them "
            "(engine landmark_warp).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
