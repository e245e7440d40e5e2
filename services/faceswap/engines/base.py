"""The interface every face swap engine implements, whatever model it runs.

Data path: photo -> `prepare_identity` -> FaceIdentity (bytes the caller carries) ->
`start_stream` -> a FrameStream -> one FrameResult per template frame (its box: the face).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.shared.engine_state import StateKind
from services.shared.engines import Engine, FrameStream
from services.shared.face_choice import Detection, FaceChoice

IDENTITY_STATE = StateKind("the face identity", "prepare the identity again")


@dataclass(frozen=True)
class FaceIdentity:
    """The face to put on every frame, computed once per job and reusable by any replica."""

    engine: str  # name of the engine that produced it; only that engine can use it
    state: bytes  # engine-specific and opaque to callers
    face_box: tuple[int, int, int, int]  # x, y, width, height of the face in the photo
    detection_score: float


class FaceSwapEngine(Engine):
    @abstractmethod
    def find_faces(self, photo: np.ndarray) -> Sequence[Detection]:
        """Every face this engine's detector finds in an RGB uint8 photo, in no set order."""

    @abstractmethod
    def prepare_identity(self, photo: np.ndarray, choice: FaceChoice | None = None) -> FaceIdentity:
        """The identity of the named face of an RGB uint8 photo, else of its main face.

        Raises what face_choice.photo_face raises: FailedPrecondition("No face found in the
        photo: ...") when there is no face, and for an ambiguous, too small or badly exposed
        face; InvalidInput when the choice matches no face.
        """

    @abstractmethod
    def start_stream(self, identity: FaceIdentity) -> FrameStream:
        """Swaps the identity onto one face through the frames of one stream: the main face
        where the stream starts, then the same person (face_choice.FaceTracker).

        Raises InvalidInput if the identity belongs to another engine or its state is corrupt.
        """
