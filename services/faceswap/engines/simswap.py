"""The neural face swap engine: SimSwap as published, on the official weights, batched.

Data path per frame: detect the faces and their five landmarks (SCRFD, or dlib where the
SCRFD file is absent), follow one person (face_choice.FaceTracker) and align the official
crop on the caller's thread; the crop and the job's identity embedding join a batch for one
generator pass (frames of every stream share passes); when the batch returns, the swapped
crop is colour-matched and pasted back through the official soft mask. The identity (ArcFace,
once per job) travels as engine state: the embedding and the generator's resolution, no
pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import (
    IDENTITY_STATE,
    FaceIdentity,
    FaceSwapEngine,
)
from services.faceswap.simswap import files
from services.faceswap.simswap.alignment import aligned_crop, estimate_alignment
from services.faceswap.simswap.detector import (
    DlibFivePointDetector,
    FaceLandmarks,
    FivePointDetector,
    ScrfdDetector,
)
from services.faceswap.simswap.paste_back import paste_back
from services.shared.batching import Batcher, then
from services.shared.engine_state import check_owner, decode_state, encode_state
from services.shared.engines import FrameResult, FrameStream, resolved
from services.shared.errors import EngineNotReady, InvalidInput
from services.shared.face_choice import FaceChoice, FaceTracker, photo_face
from services.shared.faces import default_analyzer
from services.shared.model_files import check_files

if TYPE_CHECKING:  # torch is imported only once the weights are found
    from services.faceswap.simswap.models import SimSwapModels

log = logging.getLogger(__name__)

EMBEDDING_SIZE = 512
# Below this distance between the eyes (px) a face is too small to carry a 224 px crop's
# detail; such frames pass through unchanged.
MIN_EYE_DISTANCE = 8.0


@dataclass(frozen=True)
class SwapRequest:
    crop: np.ndarray  # aligned RGB uint8, S x S x 3
    identity: np.ndarray  # unit-length float32, 512


class SimSwapEngine(FaceSwapEngine):
    name = "simswap"

    def __init__(self, settings: FaceSwapSettings | None = None) -> None:
        self.settings = settings or FaceSwapSettings.load()
        self.resolution = self.settings.simswap_resolution
        self.device = "-"
        self.models: SimSwapModels | None = None
        self.detector: FivePointDetector | None = None
        self.batcher: Batcher[SwapRequest, np.ndarray] | None = None

    def load(self) -> None:
        if self.resolution not in files.GENERATORS:
            raise EngineNotReady(
                f"REMIND_FACESWAP_SIMSWAP_RESOLUTION is {self.resolution}: "
                f"choose one of {sorted(files.GENERATORS)}"
            )
        models_dir = self.settings.models_path()
        present = check_files(models_dir, files.files_for(self.resolution))
        # Torch is imported only once the files are there, so a server without weights
        # starts as fast as one without this engine.
        from services.faceswap.simswap.models import SimSwapModels

        models = SimSwapModels(
            present[files.ARCFACE.path],
            present[files.GENERATORS[self.resolution].path],
            self.resolution,
            cpu_threads=self.settings.cpu_threads,
        )
        if files.DETECTOR.path in present:
            detector: FivePointDetector = ScrfdDetector(present[files.DETECTOR.path])
        else:
            log.info("SCRFD file absent (%s): dlib landmarks stand in", files.DETECTOR.path)
            detector = DlibFivePointDetector(default_analyzer())
        self.models, self.detector = models, detector
        self.device = models.device.type
        self.batcher = Batcher.for_frames(self._swap_batch, self.settings, "simswap-batcher")

    def find_faces(self, photo: np.ndarray) -> list[FaceLandmarks]:
        _, detector, _ = self._loaded()
        return detector.detect(photo)

    def prepare_identity(self, photo: np.ndarray, choice: FaceChoice | None = None) -> FaceIdentity:
        models, detector, _ = self._loaded()
        face = photo_face(detector.detect(photo), photo, choice)
        resolution = self.resolution
        alignment = estimate_alignment(face.points, resolution)
        embedding = models.identity(aligned_crop(photo, alignment, resolution))
        return FaceIdentity(
            engine=self.name,
            state=encode_state(
                self.name,
                {
                    "embedding": embedding.astype(np.float32),
                    "resolution": np.array(resolution, dtype=np.int32),
                },
            ),
            face_box=face.box,
            detection_score=face.score,
        )

    def start_stream(self, identity: FaceIdentity) -> FrameStream:
        self._loaded()
        embedding, resolution = decode_identity(identity, self.name)
        if resolution != self.resolution:
            raise InvalidInput(
                f"The identity was prepared for the {resolution} px model; this server runs "
                f"the {self.resolution} px one: prepare it again."
            )
        return SimSwapSwapper(self, embedding)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None

    def _swap_batch(self, requests: Sequence[SwapRequest]) -> list[np.ndarray]:
        models, _, _ = self._loaded()
        return models.swap(
            [request.crop for request in requests], [request.identity for request in requests]
        )

    def _loaded(
        self,
    ) -> tuple[SimSwapModels, FivePointDetector, Batcher[SwapRequest, np.ndarray]]:
        if self.models is None or self.detector is None or self.batcher is None:
            raise EngineNotReady("The SimSwap engine is not loaded.")
        return self.models, self.detector, self.batcher


class SimSwapSwapper(FrameStream):
    def __init__(self, engine: SimSwapEngine, embedding: np.ndarray) -> None:
        self.engine = engine
        self.embedding = embedding
        self.tracker = FaceTracker()

    def process(self, frame: np.ndarray) -> FrameResult:
        return self.submit(frame).result()

    def submit(self, frame: np.ndarray) -> Future[FrameResult]:
        _, detector, batcher = self.engine._loaded()
        face, _ = self.tracker.follow(detector.detect(frame), frame.shape)
        if face is None or _eye_distance(face) < MIN_EYE_DISTANCE:
            return resolved(FrameResult.unchanged(frame))
        size = self.engine.resolution
        alignment = estimate_alignment(face.points, size)
        crop = aligned_crop(frame, alignment, size)
        pending = batcher.submit(SwapRequest(crop, self.embedding))

        def finish(swapped: np.ndarray) -> FrameResult:
            pasted = paste_back(frame, swapped, crop, alignment)
            if pasted.box is None:
                return FrameResult.unchanged(frame)
            return FrameResult(image=pasted.image, face_found=True, box=face.box)

        return then(pending, finish)


def decode_identity(identity: FaceIdentity, engine: str) -> tuple[np.ndarray, int]:
    """The identity's embedding and the generator resolution it was prepared for."""
    check_owner(identity.engine, engine, IDENTITY_STATE)
    arrays = decode_state(identity.state, engine, ("embedding", "resolution"), IDENTITY_STATE)
    embedding = arrays["embedding"]
    if embedding.shape != (EMBEDDING_SIZE,) or arrays["resolution"].shape != ():
        raise IDENTITY_STATE.corrupt()
    return embedding.astype(np.float32), int(arrays["resolution"])


def _eye_distance(face: FaceLandmarks) -> float:
    return float(np.linalg.norm(face.points[1] - face.points[0]))
