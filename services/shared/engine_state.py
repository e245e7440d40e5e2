"""State an engine hands its callers to carry back later: a face identity, audio features.

Named arrays in an .npz with a format version and the owning engine's name; never a pickle.
The state travels through callers (and may be stored with a job), so it is checked on the way
back in: corrupt, foreign or outdated state is refused as invalid input that says what to redo.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.shared.errors import InvalidInput

FORMAT_VERSION = 2


@dataclass(frozen=True)
class StateKind:
    """What the state is, for the messages a caller reads when it comes back unusable."""

    noun: str  # "the face identity"
    redo: str  # "prepare the identity again"

    def corrupt(self, detail: str = "") -> InvalidInput:
        suffix = f" ({detail})" if detail else ""
        return InvalidInput(f"{self.noun.capitalize()} is corrupt{suffix}: {self.redo}.")


def encode_state(engine: str, arrays: dict[str, np.ndarray], compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    named: dict[str, Any] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        "engine": np.array(engine),
        **arrays,
    }
    save(buffer, **named)
    return buffer.getvalue()


def decode_state(
    state: bytes, engine: str, names: Sequence[str], kind: StateKind
) -> dict[str, np.ndarray]:
    """The named arrays, checked: this engine's, this format, every float finite."""
    try:
        with np.load(io.BytesIO(state), allow_pickle=False) as archive:
            version = int(archive["format_version"])
            owner = str(archive["engine"])
            arrays = {name: archive[name] for name in names}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise kind.corrupt() from error
    if version != FORMAT_VERSION:
        raise InvalidInput(
            f"{kind.noun.capitalize()} has format version {version}, this server reads "
            f"{FORMAT_VERSION}: {kind.redo}."
        )
    check_owner(owner, engine, kind)
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise kind.corrupt(f"{name} is not finite")
    return arrays


def check_owner(owner: str, engine: str, kind: StateKind) -> None:
    if owner != engine:
        raise InvalidInput(
            f"{kind.noun.capitalize()} was prepared by engine '{owner}', not '{engine}': "
            f"{kind.redo} with this engine."
        )
