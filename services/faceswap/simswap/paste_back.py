"""Returns a swapped crop to its frame: inverse affine warp, colour match, soft square mask.

The mask is the official one (`util/reverse2original.py`): the crop's square warped back into
the frame, binarised above 20/255, eroded with a 40 x 40 kernel and blurred with a 41 x 41
Gaussian. The official kernels are in frame pixels whatever the face size; here they scale
with the crop's size in the frame (40/224 and 41/224 of its side), so a small GIF face keeps
the same proportions of untouched border and feather as a 224 px one, and no seam shows.
Colours are matched in LAB to the frame's own crop before blending, which keeps skin tone and
lighting continuous across the feather. Only the crop's bounding box is processed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.shared.face_blend import blend, match_colours

MASK_THRESHOLD = 20.0  # of 255, official
EROSION_FRACTION = 40 / 224  # official 40 px kernel at the 224 crop's own scale
BLUR_FRACTION = 41 / 224  # official (2 * 20 + 1) px Gaussian at the same scale
MIN_KERNEL = 3
# Colour match: bounds on the per-channel spread ratio, and the share of the crop (centred)
# whose statistics are compared: the face, not the background around it.
STD_RATIO_RANGE = (0.8, 1.25)
STATISTICS_INSET = 0.25


@dataclass(frozen=True)
class PastedFace:
    image: np.ndarray  # the frame with the face pasted, RGB uint8
    box: tuple[int, int, int, int] | None  # x, y, width, height of the pixels that changed


def paste_back(
    frame: np.ndarray, swapped: np.ndarray, original: np.ndarray, alignment: np.ndarray
) -> PastedFace:
    """Blends the swapped crop (RGB uint8, S x S) into the frame where `alignment` took it from."""
    crop_size = swapped.shape[0]
    inverse = cv2.invertAffineTransform(np.asarray(alignment, dtype=np.float64))
    region = _region(inverse, crop_size, frame.shape)
    if region is None:
        return PastedFace(frame, None)
    x, y, width, height = region
    to_region = inverse.copy()
    to_region[:, 2] -= (x, y)

    matched = match_colours(swapped, original, _face_centre(crop_size), STD_RATIO_RANGE)
    face = cv2.warpAffine(matched.astype(np.float32), to_region, (width, height))
    mask = soft_mask(crop_size, to_region, (height, width))
    result = frame.copy()
    result[y : y + height, x : x + width] = blend(face, frame[y : y + height, x : x + width], mask)
    return PastedFace(result, _changed_box(mask, x, y))


def soft_mask(crop_size: int, to_region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The official eroded, blurred square, in [0, 1], for the region the crop covers."""
    height, width = shape
    white = np.full((crop_size, crop_size), 255.0, dtype=np.float32)
    mask = cv2.warpAffine(white, to_region, (width, height))
    mask[mask > MASK_THRESHOLD] = 255.0
    side_in_frame = crop_size * np.sqrt(abs(np.linalg.det(to_region[:, :2])))
    erosion = max(MIN_KERNEL, round(side_in_frame * EROSION_FRACTION))
    blur = max(MIN_KERNEL, round(side_in_frame * BLUR_FRACTION)) | 1
    mask = cv2.erode(mask, np.ones((erosion, erosion), np.uint8))
    mask = cv2.GaussianBlur(mask, (blur, blur), 0)
    return mask / 255.0


def _face_centre(crop_size: int) -> np.ndarray:
    """The crop's centred square whose colours are compared: the face, not its background."""
    inset = int(crop_size * STATISTICS_INSET)
    centre = np.zeros((crop_size, crop_size), dtype=bool)
    centre[inset : crop_size - inset, inset : crop_size - inset] = True
    return centre


def _region(
    inverse: np.ndarray, crop_size: int, frame_shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    corners = np.array([[0, 0], [crop_size, 0], [0, crop_size], [crop_size, crop_size]], float)
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = frame_shape[:2]
    left, top = np.floor(mapped.min(axis=0)).astype(int) - 1
    right, bottom = np.ceil(mapped.max(axis=0)).astype(int) + 1
    left, top = max(int(left), 0), max(int(top), 0)
    right, bottom = min(int(right), width), min(int(bottom), height)
    if right - left < 2 or bottom - top < 2:
        return None
    return left, top, right - left, bottom - top


def _changed_box(mask: np.ndarray, x: int, y: int) -> tuple[int, int, int, int] | None:
    rows = np.nonzero((mask > 0.5 / 255).any(axis=1))[0]
    columns = np.nonzero((mask > 0.5 / 255).any(axis=0))[0]
    if not len(rows):
        return None
    return (
        x + int(columns[0]),
        y + int(rows[0]),
        int(columns[-1] - columns[0] + 1),
        int(rows[-1] - rows[0] + 1),
    )
