"""SCRFD decoding against insightface's own SCRFD class, dlib's five points, and alignment."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import transform as skimage_transform
from torch import nn

from services.faceswap.simswap.alignment import aligned_crop, estimate_alignment, templates_for
from services.faceswap.simswap.detector import DlibFivePointDetector, ScrfdDetector, primary_face
from services.shared.errors import EngineNotReady
from services.shared.face_geometry import umeyama_similarity
from services.shared.faces import default_analyzer

STRIDES = (8, 16, 32)


class RandomScrfd(nn.Module):
    """An SCRFD-format network (official input name and the 9 outputs in official order:
    scores, box distances and landmark distances for strides 8, 16, 32, two anchors per
    location) whose scores rise with brightness, so a white square is a "face"."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Conv2d(3, 2, 1)
        self.box = nn.Conv2d(3, 8, 1)
        self.points = nn.Conv2d(3, 20, 1)
        with torch.no_grad():
            self.score.weight.fill_(2.0)
            self.score.bias.fill_(-3.0)
            self.box.weight.normal_(0, 0.2)
            self.box.bias.uniform_(1.0, 2.5)
            self.points.weight.normal_(0, 0.2)
            self.points.bias.uniform_(-1.0, 1.0)

    def forward(self, image: torch.Tensor):
        scores, boxes, points = [], [], []
        for stride in STRIDES:
            features = F.avg_pool2d(image, stride)
            scores.append(torch.sigmoid(self.score(features)).permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(self.box(features).permute(0, 2, 3, 1).reshape(-1, 4))
            points.append(self.points(features).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *points)


def export_random_scrfd(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    outputs = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        _export(RandomScrfd().eval(), path, outputs)
    return path


def _export(network: nn.Module, path: Path, outputs: list[str]) -> None:
    torch.onnx.export(
        network,
        (torch.zeros(1, 3, 640, 640),),
        str(path),
        input_names=["input.1"],
        output_names=outputs,
        dynamic_axes={"input.1": {2: "height", 3: "width"}},
        opset_version=11,
        dynamo=False,
    )


def _upstream_scrfd_class():
    """insightface's SCRFD, imported without running insightface/__init__ (whose imports
    need packages this environment does not install)."""
    spec = importlib.util.find_spec("insightface")
    root = Path(spec.origin).parent
    saved = {name: sys.modules.get(name) for name in ("insightface", "insightface.model_zoo")}
    try:
        for name, path in (("insightface", root), ("insightface.model_zoo", root / "model_zoo")):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
        return importlib.import_module("insightface.model_zoo.scrfd").SCRFD
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _frame_with_bright_squares() -> np.ndarray:
    frame = np.zeros((360, 480, 3), dtype=np.uint8)
    frame[100:190, 200:290] = 255
    frame[40:70, 40:70] = (200, 220, 240)
    return frame


@pytest.fixture(scope="module")
def scrfd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_random_scrfd(tmp_path_factory.mktemp("scrfd") / "scrfd_10g_bnkps.onnx")


def test_scrfd_decoding_matches_insightface(scrfd_file):
    frame = _frame_with_bright_squares()
    ours = ScrfdDetector(scrfd_file).detect(frame)

    upstream = _upstream_scrfd_class()(model_file=str(scrfd_file))
    upstream.prepare(-1, input_size=(640, 640))
    boxes, points = upstream.detect(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), det_thresh=0.6)

    assert len(ours) == len(boxes) > 1, "several faces survive NMS"
    for face, box, kps in zip(ours, boxes, points, strict=True):
        assert face.score == pytest.approx(float(box[4]), abs=1e-4)
        np.testing.assert_allclose(face.points, kps, atol=1e-3)
        x1, y1 = max(0.0, box[0]), max(0.0, box[1])
        assert abs(face.box[0] - x1) <= 1 and abs(face.box[1] - y1) <= 1


def test_scrfd_session_reports_the_provider_it_really_got(scrfd_file):
    detector = ScrfdDetector(scrfd_file)
    got_cuda = "CUDAExecutionProvider" in detector.session.get_providers()
    assert detector.device == ("cuda" if got_cuda else "cpu")
    assert detector.input_name == "input.1"


def test_a_file_that_is_not_scrfd_is_refused(tmp_path):
    broken = tmp_path / "scrfd_10g_bnkps.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(EngineNotReady, match="cannot be loaded"):
        ScrfdDetector(broken)


def test_dlib_stands_in_with_scrfds_five_points(user_photo):
    face = primary_face(DlibFivePointDetector(default_analyzer()), user_photo)
    assert face is not None
    left_eye, right_eye, nose, mouth_left, mouth_right = face.points
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


@pytest.mark.parametrize("crop_size", [224, 512])
def test_alignment_puts_the_landmarks_on_the_official_template(user_photo, crop_size):
    face = primary_face(DlibFivePointDetector(default_analyzer()), user_photo)
    matrix = estimate_alignment(face.points, crop_size)
    moved = face.points @ matrix[:, :2].T + matrix[:, 2]
    nearest = min(np.abs(moved - template).max() for template in templates_for(crop_size))
    assert nearest < 0.08 * crop_size
    assert aligned_crop(user_photo, matrix, crop_size).shape == (crop_size, crop_size, 3)


def test_umeyama_matches_scikit_image():
    rng = np.random.default_rng(7)
    for _ in range(5):
        source, target = rng.uniform(0, 400, (5, 2)), rng.uniform(0, 224, (5, 2))
        reference = skimage_transform.SimilarityTransform.from_estimate(source, target)
        np.testing.assert_allclose(
            umeyama_similarity(source, target), reference.params[:2], atol=1e-9
        )
