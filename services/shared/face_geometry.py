"""Where pixels go, for every engine: similarity fits, non-maximum suppression, triangle warps.

Detector-agnostic: points and boxes are plain arrays in image pixels, so SCRFD, S3FD and
dlib's landmarks share the same code.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

Triangle = np.ndarray  # 3 x 2 float32 points


def umeyama_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation, uniform scale and shift (2 x 3) taking source points to target.

    Umeyama (1991) as skimage's SimilarityTransform.estimate computes it, which is what
    SimSwap's official alignment calls.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    count = source.shape[0]
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / count
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[-1] = -1.0
    u, singular_values, vt = np.linalg.svd(covariance)
    rank = np.linalg.matrix_rank(covariance)
    if rank == 0:
        raise ValueError("degenerate landmarks: all points coincide")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        rotation = u @ vt
    elif rank == 1:
        flipped = signs.copy()
        flipped[-1] = -1.0
        rotation = u @ np.diag(flipped) @ vt
    else:
        rotation = u @ np.diag(signs) @ vt
    scale = (singular_values @ signs) / source_centred.var(axis=0).sum()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices of the boxes (x1, y1, x2, y2) kept, best score first.

    Widths and heights count both edge pixels (+1), the convention of insightface's SCRFD and
    of S3FD's official `bbox.nms` alike.
    """
    x1, y1, x2, y2 = np.asarray(boxes, dtype=np.float64).T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap_w = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1
        overlap_h = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        intersection = np.maximum(0.0, overlap_w) * np.maximum(0.0, overlap_h)
        iou = intersection / (areas[best] + areas[rest] - intersection)
        order = rest[iou <= threshold]
    return keep


def signed_areas(triangles: np.ndarray) -> np.ndarray:
    """Signed areas of n x 3 x 2 triangles; the sign is the winding."""
    edges = triangles[:, 1:] - triangles[:, :1]
    return 0.5 * (edges[:, 0, 0] * edges[:, 1, 1] - edges[:, 0, 1] * edges[:, 1, 0])


def warp_triangles(
    source: np.ndarray,
    triangles: Iterable[tuple[Triangle, Triangle]],
    fallback: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """An image of `shape` whose pixels inside each (target, source) triangle pair come from
    the source triangle by their affine map, and elsewhere by `fallback` (2 x 3, target pixel
    -> source pixel). Later triangles win where they overlap."""
    height, width = shape
    affines: list[np.ndarray] = [np.asarray(fallback, dtype=np.float32)]
    triangle_ids = np.zeros((height, width), dtype=np.int32)
    for target_triangle, source_triangle in triangles:
        target_corners = np.asarray(target_triangle, dtype=np.float32)
        source_corners = np.asarray(source_triangle, dtype=np.float32)
        affines.append(cv2.getAffineTransform(target_corners, source_corners))
        corners = np.rint(target_corners).astype(np.int32)
        cv2.fillConvexPoly(triangle_ids, corners, len(affines) - 1)
    per_pixel = np.asarray(affines, dtype=np.float32)[triangle_ids]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = per_pixel[..., 0, 0] * xs + per_pixel[..., 0, 1] * ys + per_pixel[..., 0, 2]
    map_y = per_pixel[..., 1, 0] * xs + per_pixel[..., 1, 1] * ys + per_pixel[..., 1, 2]
    return cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
