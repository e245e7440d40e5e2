"""Putting the generated 96 x 96 face back into the frame.

The official script resizes the output to the face box and pastes the whole rectangle, which
leaves a visible box and repaints the upper face with the network's blurrier copy. Only the
lower half is generated (the upper half is the reference), so only the mouth region is blended
in here: its colours matched to the frame's (LAB mean and spread), through a mask that is
solid over the mouth and jaw and fades out over a band at its edges.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.shared.face_blend import blend, match_colours

# The blended region, as fractions of the face box: the lower half (where the network draws),
# short of the box's sides and bottom where its texture is weakest.
REGION_TOP, REGION_BOTTOM = 0.5, 0.97
REGION_LEFT, REGION_RIGHT = 0.1, 0.9
FEATHER = 0.08  # of the box width
# Bounds on the per-channel spread ratio of the colour match (a flat generated patch must
# not be stretched into noise).
STD_RATIO_RANGE = (0.6, 1.4)


def mouth_region(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """x, y, width, height of the region the generated face replaces in a box x1, y1, x2, y2."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    left, top = x1 + round(REGION_LEFT * width), y1 + round(REGION_TOP * height)
    right, bottom = x1 + round(REGION_RIGHT * width), y1 + round(REGION_BOTTOM * height)
    return left, top, max(1, right - left), max(1, bottom - top)


def paste_mouth(
    frame: np.ndarray, generated_rgb: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """The frame with the generated face's mouth region blended into the box x1, y1, x2, y2."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    original = frame[y1:y2, x1:x2]
    face = cv2.resize(generated_rgb, (width, height))
    mask = _feathered_mask(width, height)
    face = match_colours(face, original, mask > 0.5, STD_RATIO_RANGE)
    result = frame.copy()
    result[y1:y2, x1:x2] = blend(face, original, mask)
    return result


def _feathered_mask(width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.float32)
    left, top, region_width, region_height = mouth_region((0, 0, width, height))
    feather = max(1.0, FEATHER * width)
    inset = max(1, int(round(feather)))
    # Solid inside the region less the feather, fading to 0 at the region's edge.
    cv2.rectangle(
        mask,
        (left + inset, top + inset),
        (left + region_width - 1 - inset, top + region_height - 1 - inset),
        1.0,
        thickness=-1,
    )
    # The kernel reaches `inset` pixels: nothing outside the region changes.
    return cv2.GaussianBlur(mask, (2 * inset + 1, 2 * inset + 1), feather / 2)
