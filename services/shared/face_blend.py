"""How a pasted face meets its frame, for every engine: LAB colour matching and alpha blends."""

from __future__ import annotations

import cv2
import numpy as np

# Fewer pixels than this say nothing reliable about a region's colours.
MIN_STATISTICS_PIXELS = 16


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


def blend(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """foreground * alpha + background * (1 - alpha), rounded to uint8; alpha is H x W."""
    weight = alpha[..., None]
    mixed = foreground.astype(np.float32) * weight + background.astype(np.float32) * (1.0 - weight)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
