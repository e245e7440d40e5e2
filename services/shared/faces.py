"""The offline face stack: detection, 68-point landmarks and identity embeddings, all dlib.

The weights ship inside the `face_recognition_models` wheel, so nothing is downloaded. That
package cannot be imported on its own (it needs `pkg_resources`), so its folder is located
through the import system instead.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np

from services.shared.errors import EngineNotReady, InvalidInput
from services.shared.face_choice import main_face

SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
FACE_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# Named landmarks of the iBUG 68-point scheme dlib's shape predictor follows (the subject's
# right eye and brow are on the image's left).
LANDMARK_COUNT = 68
JAW = np.arange(0, 17)
CHIN = 8
RIGHT_BROW, LEFT_BROW = np.arange(17, 22), np.arange(22, 27)
BROWS = np.arange(17, 27)
NOSE_BRIDGE, NOSE_TIP = 27, 30
RIGHT_EYE, LEFT_EYE = np.arange(36, 42), np.arange(42, 48)
OUTER_LIPS = np.arange(48, 60)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54  # the outer lips' corners
UPPER_OUTER_LIPS, LOWER_OUTER_LIPS = np.arange(49, 54), np.arange(55, 60)  # corners excluded
INNER_LIPS = np.arange(60, 68)
INNER_LEFT, INNER_RIGHT = 60, 64  # the inner lips' corners
UPPER_INNER_LIPS, LOWER_INNER_LIPS = np.arange(61, 64), np.arange(65, 68)

# dlib's documented threshold for its ResNet embedding (99.38% on LFW): below it, same person.
SAME_PERSON_DISTANCE = 0.6


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[int, int, int, int]  # x, y, width, height in the image's pixels, clipped to it
    score: float  # detector confidence; higher is more face-like
    landmarks: np.ndarray  # 68x2 float32 (x, y) in the image's pixels, may lie outside it


def default_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EngineNotReady("The face models are missing: install face_recognition_models.")
    return Path(spec.submodule_search_locations[0]) / "models"


@dataclass(frozen=True)
class _DlibModels:
    detector: dlib.fhog_object_detector
    shape_predictor: dlib.shape_predictor
    face_encoder: dlib.face_recognition_model_v1


class FaceAnalyzer:
    """Finds faces, their landmarks and identity embeddings in RGB uint8 images.

    Models load lazily on first use. dlib objects are not thread-safe, so every dlib call runs
    under one lock; callers may share an instance across threads.
    """

    def __init__(
        self,
        models_dir: Path | None = None,
        max_detect_side: int = 640,
        upsample_below_side: int = 320,
    ) -> None:
        self.models_dir = models_dir
        # Detection runs on a copy at most this large: HOG cost grows with pixels, and faces
        # worth swapping stay above the detector's 80 px window after the downscale.
        self.max_detect_side = max_detect_side
        # Images this small are searched upsampled once so that faces of ~40 px are found.
        self.upsample_below_side = upsample_below_side
        self._lock = threading.Lock()
        self._models: _DlibModels | None = None

    def load(self) -> None:
        """Load the models now rather than on first use; raise EngineNotReady if missing."""
        with self._lock:
            self._load_locked()

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in an RGB uint8 image, best detection score first."""
        image = _checked_rgb(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.max_detect_side / max(height, width))
        search_image = image
        if scale < 1.0:
            search_size = (max(1, round(width * scale)), max(1, round(height * scale)))
            search_image = cv2.resize(image, search_size, interpolation=cv2.INTER_AREA)
        upsample = 1 if max(search_image.shape[:2]) < self.upsample_below_side else 0

        with self._lock:
            models = self._load_locked()
            rects, scores, _ = models.detector.run(search_image, upsample, 0.0)
            if not rects and upsample == 0:
                # dlib's HOG window is 80x80 px: look again, upsampled, for smaller faces.
                rects, scores, _ = models.detector.run(search_image, 1, 0.0)
            faces = []
            for rect, score in zip(rects, scores, strict=True):
                full_rect = _scaled_rect(rect, 1.0 / scale)
                shape = models.shape_predictor(image, full_rect)
                landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
                box = _clipped_box(full_rect, width, height)
                faces.append(DetectedFace(box=box, score=float(score), landmarks=landmarks))

        faces.sort(key=lambda face: (-face.score, -face.box[2] * face.box[3]))
        return faces

    def primary_face(self, image: np.ndarray) -> DetectedFace | None:
        """The main face (face_choice.main_face: the largest, most central); None if no face."""
        return main_face(self.detect(image), image.shape)

    def identity_embedding(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The 128-d dlib ResNet descriptor of a face found in this image."""
        image = _checked_rgb(image)
        x, y, width, height = face.box
        rect = dlib.rectangle(x, y, x + width - 1, y + height - 1)
        points = [dlib.point(int(round(px)), int(round(py))) for px, py in face.landmarks]
        shape = dlib.full_object_detection(rect, points)
        with self._lock:
            descriptor = self._load_locked().face_encoder.compute_face_descriptor(image, shape)
        return np.asarray(descriptor, dtype=np.float64)

    def _load_locked(self) -> _DlibModels:
        if self._models is not None:
            return self._models
        models_dir = self.models_dir or default_models_dir()
        shape_file = models_dir / SHAPE_PREDICTOR_FILE
        encoder_file = models_dir / FACE_RECOGNITION_FILE
        for required in (shape_file, encoder_file):
            if not required.is_file():
                raise EngineNotReady(f"Face model file missing: {required}.")
        try:
            self._models = _DlibModels(
                dlib.get_frontal_face_detector(),
                dlib.shape_predictor(str(shape_file)),
                dlib.face_recognition_model_v1(str(encoder_file)),
            )
        except RuntimeError as error:
            message = f"Face models in {models_dir} cannot be loaded: {error}"
            raise EngineNotReady(message) from error
        return self._models


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings; below SAME_PERSON_DISTANCE: same person."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


_default_analyzer: FaceAnalyzer | None = None
_default_analyzer_lock = threading.Lock()


def default_analyzer() -> FaceAnalyzer:
    """The process-wide analyzer, so the models are loaded once per process."""
    global _default_analyzer
    with _default_analyzer_lock:
        if _default_analyzer is None:
            _default_analyzer = FaceAnalyzer()
        return _default_analyzer


def _checked_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidInput("Expected an RGB image as a uint8 array.")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InvalidInput(f"Expected an RGB image of shape HxWx3, got {image.shape}.")
    return np.ascontiguousarray(image)


def _scaled_rect(rect: dlib.rectangle, factor: float) -> dlib.rectangle:
    if factor == 1.0:
        return rect
    return dlib.rectangle(
        round(rect.left() * factor),
        round(rect.top() * factor),
        round((rect.right() + 1) * factor) - 1,
        round((rect.bottom() + 1) * factor) - 1,
    )


def _clipped_box(rect: dlib.rectangle, width: int, height: int) -> tuple[int, int, int, int]:
    left, top = max(0, rect.left()), max(0, rect.top())
    right, bottom = min(width - 1, rect.right()), min(height - 1, rect.bottom())
    return left, top, max(0, right - left + 1), max(0, bottom - top + 1)
