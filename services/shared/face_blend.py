"""How a pasted face meets its frame, for every engine: LAB colour matching and alpha blends."""

from __future__ import annotations

import cv2
import numpy as np

from services.shared.engines import Box

# Fewer pixels than this say nothing reliable about a region's colours.
MIN_STATISTICS_PIXELS = 16
# A well-lit face's 8-bit LAB lightness over its box: the sample portraits and the astronaut
# average 157-176 with a spread of 44-49.
WELL_LIT_LIGHTNESS, WELL_LIT_SPREAD = 160.0, 45.0
# A face darker or flatter than this is relit; the stretch stops at this gain, beyond which it
# shows 8-bit steps and noise more than a face.
DARK_LIGHTNESS, FLAT_SPREAD = 80.0, 25.0
MAX_LIGHTNESS_GAIN = 8.0


def match_colours(
    image: np.ndarray,
    reference: np.ndarray,
    region: np.ndarray,
    std_ratio_range: tuple[float, float],
) -> np.ndarray:
    """`image` (RGB uint8) recoloured so its LAB mean and spread on `region` (a boolean map of
    both images' shape) match the reference's. The spread ratio is clipped to the range: a
    flat patch must not be stretched into noise, nor a clean one's spread doubled."""
    if region.sum() < MIN_STATISTICS_PIXELS:
        return image
    image_lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    reference_lab = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)
    image_pixels, reference_pixels = image_lab[region], reference_lab[region]
    ratio = np.clip(
        reference_pixels.std(axis=0) / np.maximum(image_pixels.std(axis=0), 1e-3),
        *std_ratio_range,
    )
    matched = (image_lab - image_pixels.mean(axis=0)) * ratio + reference_pixels.mean(axis=0)
    return cv2.cvtColor(np.clip(matched, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def relit(image: np.ndarray, face_box: Box) -> np.ndarray:
    """`image` (RGB uint8) with its lightness stretched so that the face in `face_box` has a
    well-lit face's, when that face is dark or flat; otherwise `image` itself.

    Colour matching at paste time keeps a photo's spread within a narrow ratio of the frame's,
    so a face from a dim or washed-out photo would stay flat and lose its likeness.
    """
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    lightness = lab[..., 0]
    x, y, width, height = face_box
    face = lightness[max(y, 0) : y + height, max(x, 0) : x + width]
    if face.size < MIN_STATISTICS_PIXELS:
        return image
    mean, spread = float(face.mean()), float(face.std())
    if mean >= DARK_LIGHTNESS and spread >= FLAT_SPREAD:
        return image
    gain = min(WELL_LIT_SPREAD / max(spread, 1e-3), MAX_LIGHTNESS_GAIN)
    lab[..., 0] = (lightness - mean) * gain + WELL_LIT_LIGHTNESS
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def blend(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """foreground * alpha + background * (1 - alpha), rounded to uint8; alpha is H x W."""
    weight = alpha[..., None]
    mixed = foreground.astype(np.float32) * weight + background.astype(np.float32) * (1.0 - weight)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
