"""Faces and their five landmarks: SCRFD as SimSwap runs it, or dlib where SCRFD is absent.

SimSwap detects with the insightface "antelope" pack's `scrfd_10g_bnkps.onnx` at
det_size 640 x 640, det_thresh 0.6, and keeps the highest-scoring face
(`face_detect_crop_single.py`); here every face is kept and face_choice picks one. The
decoding below follows insightface's `model_zoo/scrfd.py` and is written here in numpy because
the `insightface` package is installed only for its sample photos (without its dependencies,
its import fails here): the image is resized into the top-left of the square input keeping
its aspect ratio, normalised as (x - 127.5) / 128 in RGB; the nine outputs are scores, box
distances and landmark distances for strides 8, 16 and 32 with two anchors per location;
distances are multiplied by the stride and decoded from the anchor centres; NMS at IoU 0.4.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from services.shared.errors import EngineNotReady
from services.shared.face_choice import main_face
from services.shared.face_geometry import non_maximum_suppression
from services.shared.faces import FaceAnalyzer

log = logging.getLogger(__name__)

DET_SIZE = 640
DET_THRESHOLD = 0.6
NMS_THRESHOLD = 0.4
STRIDES = (8, 16, 32)
ANCHORS_PER_LOCATION = 2
INPUT_MEAN, INPUT_STD = 127.5, 128.0
OUTPUT_COUNT = 9  # scores, boxes and landmarks, each for strides 8, 16, 32 in that order

# iBUG 68-point indices giving SCRFD's five points: eye centres, nose tip, mouth corners.
DLIB_EYE_ON_IMAGE_LEFT = slice(36, 42)
DLIB_EYE_ON_IMAGE_RIGHT = slice(42, 48)
DLIB_NOSE_TIP, DLIB_MOUTH_LEFT, DLIB_MOUTH_RIGHT = 30, 48, 54


@dataclass(frozen=True)
class FaceLandmarks:
    box: tuple[int, int, int, int]  # x, y, width, height, clipped to the image
    score: float
    points: np.ndarray  # 5 x 2 float32: eye, eye, nose tip, mouth corner, mouth corner


class FivePointDetector(Protocol):
    device: str

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Faces in an RGB uint8 image, highest score first."""


def primary_face(detector: FivePointDetector, image: np.ndarray) -> FaceLandmarks | None:
    """The image's main face (face_choice.main_face), as a stream starts on it."""
    return main_face(detector.detect(image), image.shape)


class ScrfdDetector:
    def __init__(
        self,
        model_path: Path,
        det_size: int = DET_SIZE,
        threshold: float = DET_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
        threads: int = 0,
    ) -> None:
        import onnxruntime

        self.det_size = det_size
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        wanted = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=wanted
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
            raise EngineNotReady(f"{model_path} cannot be loaded by onnxruntime: {error}") from None
        # onnxruntime-gpu lists CUDA even on machines without a GPU: ask what the session got.
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != OUTPUT_COUNT:
            raise EngineNotReady(
                f"{model_path} is not an SCRFD model with landmarks: expected 1 input and "
                f"{OUTPUT_COUNT} outputs, found {len(inputs)} and {len(outputs)}"
            )
        self.input_name = inputs[0].name
        self.output_names = [output.name for output in outputs]
        self._anchor_centres: dict[tuple[int, int], np.ndarray] = {}

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        blob, scale = self._input_blob(image)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        scores, boxes, points = self._decode(outputs)
        if not len(scores):
            return []
        boxes, points = boxes / scale, points / scale
        order = np.argsort(-scores, kind="stable")
        scores, boxes, points = scores[order], boxes[order], points[order]
        keep = non_maximum_suppression(boxes, scores, self.nms_threshold)
        height, width = image.shape[:2]
        return [
            FaceLandmarks(
                box=_clipped_box(boxes[index], width, height),
                score=float(scores[index]),
                points=points[index].astype(np.float32),
            )
            for index in keep
        ]

    def _input_blob(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = image.shape[:2]
        image_ratio = height / width  # the official expressions, so sizes round the same way
        if image_ratio > 1.0:
            new_height, new_width = self.det_size, int(self.det_size / image_ratio)
        else:
            new_width, new_height = self.det_size, int(self.det_size * image_ratio)
        scale = new_height / height
        canvas = np.zeros((self.det_size, self.det_size, 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
        blob = (canvas.astype(np.float32) - INPUT_MEAN) / INPUT_STD
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), scale

    def _decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        all_scores, all_boxes, all_points = [], [], []
        levels = len(STRIDES)
        for level, stride in enumerate(STRIDES):
            # Exports with a batch axis give N x K x C; the antelope pack's give K x C.
            scores = outputs[level].reshape(-1)
            distances = outputs[level + levels].reshape(-1, 4) * stride
            point_distances = outputs[level + 2 * levels].reshape(-1, 10) * stride
            centres = self._centres(self.det_size // stride, stride)
            if len(centres) != len(scores):
                raise ValueError(
                    f"SCRFD output for stride {stride} has {len(scores)} anchors, "
                    f"expected {len(centres)}"
                )
            hits = np.nonzero(scores >= self.threshold)[0]
            all_scores.append(scores[hits])
            all_boxes.append(distance_to_box(centres[hits], distances[hits]))
            all_points.append(distance_to_points(centres[hits], point_distances[hits]))
        return (
            np.concatenate(all_scores),
            np.concatenate(all_boxes),
            np.concatenate(all_points),
        )

    def _centres(self, side: int, stride: int) -> np.ndarray:
        key = (side, stride)
        if key not in self._anchor_centres:
            ys, xs = np.mgrid[:side, :side]
            centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            self._anchor_centres[key] = np.repeat(centres, ANCHORS_PER_LOCATION, axis=0)
        return self._anchor_centres[key]


class DlibFivePointDetector:
    """The embedded stand-in: dlib's HOG detector and 68 landmarks reduced to SCRFD's five."""

    device = "cpu"

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer
        analyzer.load()

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        return [
            FaceLandmarks(box=face.box, score=face.score, points=five_points(face.landmarks))
            for face in self.analyzer.detect(image)
        ]


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    return np.array(
        [
            landmarks68[DLIB_EYE_ON_IMAGE_LEFT].mean(axis=0),
            landmarks68[DLIB_EYE_ON_IMAGE_RIGHT].mean(axis=0),
            landmarks68[DLIB_NOSE_TIP],
            landmarks68[DLIB_MOUTH_LEFT],
            landmarks68[DLIB_MOUTH_RIGHT],
        ],
        dtype=np.float32,
    )


def distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 from the distances (left, top, right, bottom) to an anchor centre."""
    return np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)


def distance_to_points(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """N x 5 x 2 landmarks from their offsets (dx, dy per point) to an anchor centre."""
    return centres[:, None, :] + distances.reshape(-1, 5, 2)


def _clipped_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    left, top = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    right, bottom = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    return left, top, max(0, right - left), max(0, bottom - top)
