"""Five-point similarity alignment to the official SimSwap crops.

The templates and the choice between them follow SimSwap's
`insightface_func/utils/face_align_ffhqandnewarc.py`: the 224 model (mode 'None') fits the
landmarks to each of five pose templates of insightface's 112 px set, scaled by crop/112, and
keeps the one with the smallest summed point error; the 512 model (mode 'ffhq') uses the single
FFHQ template given for 512 px, scaled by crop/512. The fit is Umeyama's least-squares
similarity (what scikit-image's SimilarityTransform.estimate computes), and the crop is
`cv2.warpAffine` with a black border, as in `face_detect_crop_single.py`.

Landmark order: eye, eye, nose tip, mouth corner, mouth corner, the image's left one first.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.shared.face_geometry import umeyama_similarity

# insightface's five pose templates for 112 x 112 crops: left profile, left, frontal, right,
# right profile.
POSE_TEMPLATES_112 = np.array(
    [
        [[51.642, 50.115], [57.617, 49.990], [35.740, 69.007], [51.157, 89.050], [57.025, 89.702]],
        [[45.031, 50.118], [65.568, 50.872], [39.677, 68.111], [45.177, 86.190], [64.246, 86.758]],
        [[39.730, 51.138], [72.270, 51.138], [56.000, 68.493], [42.463, 87.010], [69.537, 87.010]],
        [[46.845, 50.872], [67.382, 50.118], [72.737, 68.111], [48.167, 86.758], [67.236, 86.190]],
        [[54.796, 49.990], [60.771, 50.115], [76.673, 69.007], [55.388, 89.702], [61.257, 89.050]],
    ],
    dtype=np.float64,
)
# The FFHQ-style template SimSwap gives for 512 x 512 crops.
FFHQ_TEMPLATE_512 = np.array(
    [
        [
            [192.98138, 239.94708],
            [318.90277, 240.1936],
            [256.63416, 314.01935],
            [201.26117, 371.41043],
            [313.08905, 371.15118],
        ]
    ],
    dtype=np.float64,
)


def templates_for(crop_size: int) -> np.ndarray:
    """The official template set for a model's crop: K x 5 x 2 in crop pixels."""
    if crop_size == 512:
        return FFHQ_TEMPLATE_512 * crop_size / 512.0
    return POSE_TEMPLATES_112 * crop_size / 112.0


def estimate_alignment(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """The 2 x 3 matrix taking frame pixels to the model's crop, best template first."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)

    def fit_error(matrix: np.ndarray, template: np.ndarray) -> float:
        moved = landmarks @ matrix[:, :2].T + matrix[:, 2]
        return float(np.linalg.norm(moved - template, axis=1).sum())

    # The first of equally good templates wins, as in the official loop.
    fits = [(umeyama_similarity(landmarks, t), t) for t in templates_for(crop_size)]
    return min(fits, key=lambda fit: fit_error(*fit))[0]


def aligned_crop(image: np.ndarray, alignment: np.ndarray, crop_size: int) -> np.ndarray:
    return cv2.warpAffine(image, alignment, (crop_size, crop_size), borderValue=0.0)
