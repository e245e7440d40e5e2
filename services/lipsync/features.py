"""Engine state carried between PrepareAudio and SyncLips: named arrays in an .npz, no pickle.

The state travels through the caller (and may be stored with a job), so it is versioned and
checked on the way back in: corrupt or foreign state is refused as invalid input.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from services.shared.errors import InvalidInput

STATE_FORMAT_VERSION = 1


def encode_state(engine: str, arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format_version=np.array(STATE_FORMAT_VERSION, dtype=np.int32),
        engine=np.array(engine),
        **arrays,
    )
    return buffer.getvalue()


def decode_state(state: bytes, engine: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    corrupt = "The audio features are corrupt: prepare the audio again."
    try:
        with np.load(io.BytesIO(state), allow_pickle=False) as archive:
            version = int(archive["format_version"])
            owner = str(archive["engine"])
            arrays = {name: archive[name] for name in names}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise InvalidInput(corrupt) from error
    if version != STATE_FORMAT_VERSION:
        raise InvalidInput(f"The audio features have version {version}: prepare them again.")
    if owner != engine:
        raise InvalidInput(
            f"The audio features were prepared by engine '{owner}', not '{engine}': "
            "prepare them again with this engine."
        )
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"{corrupt} ({name} is not finite)")
    return arrays


def check_owner(features_engine: str, engine: str) -> None:
    if features_engine != engine:
        raise InvalidInput(
            f"The audio features were prepared by engine '{features_engine}', not '{engine}': "
            "prepare them again with this engine."
        )
