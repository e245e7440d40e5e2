"""The neural face swap engine: SimSwap as published, on the official weights, batched.

Data path per frame: detect the main face and its five landmarks (SCRFD, or dlib where the
SCRFD file is absent) and align the official crop on the caller's thread; the crop and the
job's identity embedding join a batch for one generator pass (frames of every stream share
passes); when the batch returns, the swapped crop is colour-matched and pasted back through
the official soft mask. The identity (ArcFace, once per job) travels as an .npz of the
embedding: no pickle.
"""

from __future__ import annotations

import io
import logging
import zipfile
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceIdentity, FaceSwapEngine, FrameSwapper, SwappedFrame
from services.faceswap.simswap import files
from services.faceswap.simswap.alignment import aligned_crop, estimate_alignment
from services.faceswap.simswap.detector import (
    DlibFivePointDetector,
    FaceLandmarks,
    FivePointDetector,
    ScrfdDetector,
    primary_face,
)
from services.faceswap.simswap.paste_back import paste_back
from services.shared.batching import Batcher, then
from services.shared.errors import EngineNotReady, FailedPrecondition, InvalidInput
from services.shared.faces import default_analyzer
from services.shared.model_files import check_files

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
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
        self.models = None
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
            torch_threads=self.settings.torch_threads,
        )
        if files.DETECTOR.path in present:
            detector: FivePointDetector = ScrfdDetector(present[files.DETECTOR.path])
        else:
            log.info("SCRFD file absent (%s): dlib landmarks stand in", files.DETECTOR.path)
            detector = DlibFivePointDetector(default_analyzer())
        self.models, self.detector = models, detector
        self.device = models.device.type
        self.batcher = Batcher(
            self._swap_batch,
            self.settings.batch_max_size,
            self.settings.batch_max_wait_ms / 1000.0,
            name="simswap-batcher",
        )

    def prepare_identity(self, photo: np.ndarray) -> FaceIdentity:
        models, detector = self._loaded()
        face = primary_face(detector, photo)
        if face is None:
            raise FailedPrecondition(
                "No face found in the photo: use a well-lit, front-facing photo of one person."
            )
        alignment = estimate_alignment(face.points, self.resolution)
        embedding = models.identity(aligned_crop(photo, alignment, self.resolution))
        return FaceIdentity(
            engine=self.name,
            state=encode_identity(embedding, self.resolution),
            face_box=face.box,
            detection_score=face.score,
        )

    def start_stream(self, identity: FaceIdentity) -> FrameSwapper:
        self._loaded()
        if identity.engine != self.name:
            raise InvalidInput(
                f"The identity was prepared by engine '{identity.engine}', not '{self.name}': "
                "prepare it again with this engine."
            )
        embedding, resolution = decode_identity(identity.state)
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

    def _swap_batch(self, requests: list[SwapRequest]) -> list[np.ndarray]:
        return self.models.swap(
            [request.crop for request in requests], [request.identity for request in requests]
        )

    def _loaded(self):
        if self.models is None or self.detector is None or self.batcher is None:
            raise EngineNotReady("The SimSwap engine is not loaded.")
        return self.models, self.detector


class SimSwapSwapper(FrameSwapper):
    def __init__(self, engine: SimSwapEngine, embedding: np.ndarray) -> None:
        self.engine = engine
        self.embedding = embedding

    def swap(self, frame: np.ndarray) -> SwappedFrame:
        return self.submit(frame).result()

    def submit(self, frame: np.ndarray) -> Future[SwappedFrame]:
        _, detector = self.engine._loaded()
        face = primary_face(detector, frame)
        if face is None or _eye_distance(face) < MIN_EYE_DISTANCE:
            return _done(SwappedFrame(image=frame, face_found=False, face_box=None))
        size = self.engine.resolution
        alignment = estimate_alignment(face.points, size)
        crop = aligned_crop(frame, alignment, size)
        pending = self.engine.batcher.submit(SwapRequest(crop, self.embedding))

        def finish(swapped: np.ndarray) -> SwappedFrame:
            pasted = paste_back(frame, swapped, crop, alignment)
            if pasted.box is None:
                return SwappedFrame(image=frame, face_found=False, face_box=None)
            return SwappedFrame(image=pasted.image, face_found=True, face_box=face.box)

        return then(pending, finish)


def encode_identity(embedding: np.ndarray, resolution: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format_version=np.array(STATE_FORMAT_VERSION, dtype=np.int32),
        resolution=np.array(resolution, dtype=np.int32),
        embedding=np.asarray(embedding, dtype=np.float32),
    )
    return buffer.getvalue()


def decode_identity(state: bytes) -> tuple[np.ndarray, int]:
    corrupt = "The face identity state is corrupt: prepare the identity again."
    try:
        with np.load(io.BytesIO(state), allow_pickle=False) as archive:
            version = int(archive["format_version"])
            resolution = int(archive["resolution"])
            embedding = archive["embedding"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        raise InvalidInput(corrupt) from error
    if version != STATE_FORMAT_VERSION:
        raise InvalidInput(f"The face identity state has version {version}: prepare it again.")
    if embedding.shape != (EMBEDDING_SIZE,) or not np.isfinite(embedding).all():
        raise InvalidInput(corrupt)
    return embedding.astype(np.float32), resolution


def _eye_distance(face: FaceLandmarks) -> float:
    return float(np.linalg.norm(face.points[1] - face.points[0]))


def _done(result: SwappedFrame) -> Future[SwappedFrame]:
    future: Future[SwappedFrame] = Future()
    future.set_result(result)
    return future
