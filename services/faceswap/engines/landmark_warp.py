"""The embedded face swap engine: dlib landmarks and a piecewise-affine warp, no weights to fetch.

Per frame: find the face followed through the stream (face_choice.FaceTracker), smooth its
landmarks over time, move them part way toward the photo's face proportions, warp the photo's
face onto them triangle by triangle, match its colours to the frame's skin in LAB, and blend
it in through a feathered mask. The template keeps its head outline, hair and lighting; the
photo brings its eyes, brows, nose and mouth (relit first if the photo is dim or washed out).

Blending is a feathered alpha mask rather than Poisson cloning (cv2.seamlessClone): cloning
dragged the template's bright eyelids into the pasted eyes, weakened the identity and cost a
third more per frame, while skin-matched colours under a wide feather leave no visible seam.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.faceswap.engines.base import (
    IDENTITY_STATE,
    FaceIdentity,
    FaceSwapEngine,
)
from services.shared.engine_state import check_owner, decode_state, encode_state
from services.shared.engines import FrameResult, FrameStream
from services.shared.errors import InvalidInput
from services.shared.face_blend import blend, match_colours, relit
from services.shared.face_choice import FaceChoice, FaceTracker, photo_face
from services.shared.face_geometry import signed_areas, umeyama_similarity, warp_triangles
from services.shared.faces import (
    BROWS,
    INNER_LIPS,
    JAW,
    LANDMARK_COUNT,
    LEFT_BROW,
    LEFT_EYE,
    OUTER_LIPS,
    RIGHT_BROW,
    RIGHT_EYE,
    DetectedFace,
    FaceAnalyzer,
    default_analyzer,
)

# The stored crop: the face plus margin, no larger than needed for template faces (<= 480 px
# frames), which keeps the identity small enough to travel with every request.
CROP_MAX_SIDE = 256
CROP_MARGIN = 0.35  # of the landmarks' extent, on each side

# A ring around the face, pushed out from its centre, so the warp also covers the feathered
# band just outside the landmarks and the forehead under the mask's top edge.
OUTER_RING_SCALE = 1.3
# The mask's top edge: brows pushed out from the face centre so they are blended whole.
BROW_LIFT_SCALE = 1.12
# Mask erosion and feather, as fractions of the face size (landmarks' larger extent).
MASK_EROSION = 0.04
MASK_FEATHER = 0.08
# LAB colour transfer: bounds on the per-channel std ratio. A clean photo next to a compressed
# frame would otherwise have its colour spread doubled, which turns shading folds red.
STD_RATIO_RANGE = (0.5, 1.2)
# The colour statistics are taken on skin only: eyes and lips grown by this factor around
# their centre, and brows as strokes this thick (fraction of face size), are left out, since
# open or closed eyes and a smile would otherwise shift the skin tone.
FEATURE_GROWTH = 1.5
BROW_STROKE = 0.06
# How far the frame's landmarks move toward the photo's face proportions (0: the template's
# shape, 1: the photo's). Eye spacing, nose and eye shape carry most of what an identity looks
# like, so they move most. Brows move less: the pasted brows must still hide the template's.
# The mouth moves half way so that it keeps the template's expression (open, laughing,
# lip-synced later); the jaw stays, since a moved jaw line would paste the photo's face over
# the template's hair or background.
FEATURE_SHAPE_WEIGHT = 0.8
BROW_SHAPE_WEIGHT = 0.4
MOUTH_SHAPE_WEIGHT = 0.5
JAW_SHAPE_WEIGHT = 0.0
SHAPE_WEIGHTS = np.full(LANDMARK_COUNT, FEATURE_SHAPE_WEIGHT, dtype=np.float32)
SHAPE_WEIGHTS[JAW] = JAW_SHAPE_WEIGHT
SHAPE_WEIGHTS[BROWS] = BROW_SHAPE_WEIGHT
SHAPE_WEIGHTS[np.concatenate([OUTER_LIPS, INNER_LIPS])] = MOUTH_SHAPE_WEIGHT
# A triangle squeezed below this fraction of its area in the photo is not warped on its own.
MIN_TRIANGLE_AREA_RATIO = 0.2
# Faces smaller than this (px) cannot carry the features; such frames pass through unchanged.
MIN_FACE_SIDE = 24

# Temporal smoothing: a One Euro filter (Casiez et al., CHI 2012) with one rate for all
# landmarks, so they move together and the face keeps its shape. Units are per frame and per
# face size, so the same tuning works at any resolution: still faces are smoothed hard (the
# detector's jitter is ~0.4 px per point on re-encoded frames), moving faces are followed.
SMOOTHING_MIN_CUTOFF = 0.08  # cycles per frame when the face is still
SMOOTHING_BETA = 12.0  # how fast the cutoff rises with speed (face sizes per frame)
SMOOTHING_SPEED_CUTOFF = 0.3
# A jump of more than this (face sizes, mean over landmarks) is a cut or another person.
SMOOTHING_RESET_JUMP = 0.35


@dataclass(frozen=True)
class SourceFace:
    """The photo's face as the warp uses it: a crop and its landmarks in crop pixels."""

    image: np.ndarray  # RGB uint8
    landmarks: np.ndarray  # 68x2 float32


class LandmarkWarpEngine(FaceSwapEngine):
    name = "landmark_warp"

    def __init__(self, analyzer: FaceAnalyzer | None = None) -> None:
        self.analyzer = analyzer or default_analyzer()

    def load(self) -> None:
        self.analyzer.load()

    def find_faces(self, photo: np.ndarray) -> list[DetectedFace]:
        return self.analyzer.detect(photo)

    def prepare_identity(self, photo: np.ndarray, choice: FaceChoice | None = None) -> FaceIdentity:
        face = photo_face(self.analyzer.detect(photo), photo, choice)
        source = _crop_source_face(photo, face)
        return FaceIdentity(
            engine=self.name,
            state=encode_source_face(self.name, source),
            face_box=face.box,
            detection_score=face.score,
        )

    def start_stream(self, identity: FaceIdentity) -> FrameStream:
        check_owner(identity.engine, self.name, IDENTITY_STATE)
        return LandmarkWarpSwapper(self.analyzer, decode_source_face(self.name, identity.state))

    def close(self) -> None:
        # The analyzer is shared by the whole process; it lives as long as the process does.
        pass


class LandmarkWarpSwapper(FrameStream):
    def __init__(self, analyzer: FaceAnalyzer, source: SourceFace) -> None:
        self.analyzer = analyzer
        self.source_levels = _source_pyramid(source)
        self.triangles = _triangulate(_with_outer_ring(source.landmarks))
        self.smoother = LandmarkSmoother()
        self.tracker = FaceTracker()

    def process(self, frame: np.ndarray) -> FrameResult:
        face, followed = self.tracker.follow(self.analyzer.detect(frame), frame.shape)
        if face is None or not followed:
            # Another person's landmarks must not be smoothed toward this one's.
            self.smoother.reset()
        if face is None:
            return FrameResult.unchanged(frame)
        landmarks = self.smoother.update(face.landmarks)
        swapped = self._paste_face(frame, landmarks)
        if swapped is None:
            return FrameResult.unchanged(frame)
        # The box follows the smoothed landmarks, i.e. where the face was pasted; the
        # detector's own boxes move in steps of its scale pyramid.
        box = _region_of(landmarks, frame.shape)
        return FrameResult(image=swapped, face_found=True, box=box)

    def _paste_face(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        if _face_size(landmarks) < MIN_FACE_SIDE:
            return None
        shaped = _with_photo_shape(landmarks, self.source_levels[0].landmarks)
        target_points = _with_outer_ring(shaped)
        roi = _region_of(np.vstack([target_points, landmarks]), frame.shape)
        if roi is None:
            return None
        x, y, width, height = roi
        origin = np.array([x, y], dtype=np.float32)
        target_patch = frame[y : y + height, x : x + width]
        frame_face, pasted_face = landmarks - origin, shaped - origin

        mask = _face_mask(frame_face, pasted_face, (height, width))
        if not mask.any():
            return None
        source = self._source_level_for(shaped)
        source_points = _with_outer_ring(source.landmarks)
        try:
            warped = _warp_piecewise_affine(
                source.image, source_points, target_points - origin, self.triangles, (height, width)
            )
        except (cv2.error, np.linalg.LinAlgError, ValueError):
            # Degenerate geometry (a face folded to a line, points far outside the frame):
            # leave this frame alone rather than fail the whole stream.
            return None
        # Skin only where neither face has a feature: the statistics compare like with like.
        skin = _skin_region(frame_face, mask.shape) & _skin_region(pasted_face, mask.shape)
        warped = match_colours(warped, target_patch, (mask > 0.5) & skin, STD_RATIO_RANGE)
        swapped = frame.copy()
        swapped[y : y + height, x : x + width] = blend(warped, target_patch, mask)
        return swapped

    def _source_level_for(self, target_landmarks: np.ndarray) -> SourceFace:
        # Use the smallest pyramid level still at least as large as the target face, so the
        # warp never shrinks a face by more than 2x with bilinear sampling (aliasing).
        target_size = _face_size(target_landmarks)
        chosen = self.source_levels[0]
        for level in self.source_levels[1:]:
            if _face_size(level.landmarks) < target_size:
                break
            chosen = level
        return chosen


class LandmarkSmoother:
    """One Euro filter over a face's landmarks, with one speed shared by all points."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._landmarks: np.ndarray | None = None
        self._speed = 0.0

    def update(self, landmarks: np.ndarray) -> np.ndarray:
        """The smoothed landmarks (68x2 float32) for this frame's detected ones."""
        current = landmarks.astype(np.float64)
        if self._landmarks is not None:
            face_size = max(_face_size(landmarks), 1.0)
            step = np.linalg.norm(current - self._landmarks, axis=1)
            jump = float(step.mean()) / face_size
            if jump > SMOOTHING_RESET_JUMP:
                self.reset()
            else:
                speed_alpha = _smoothing_alpha(SMOOTHING_SPEED_CUTOFF)
                self._speed = speed_alpha * jump + (1.0 - speed_alpha) * self._speed
                alpha = _smoothing_alpha(SMOOTHING_MIN_CUTOFF + SMOOTHING_BETA * self._speed)
                current = alpha * current + (1.0 - alpha) * self._landmarks
        self._landmarks = current
        return current.astype(np.float32)


def _smoothing_alpha(cutoff: float) -> float:
    # One Euro: alpha = 1 / (1 + tau / Te), tau = 1 / (2 pi fc), with Te = one frame.
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau)


def _crop_source_face(photo: np.ndarray, face: DetectedFace) -> SourceFace:
    height, width = photo.shape[:2]
    low = face.landmarks.min(axis=0)
    high = face.landmarks.max(axis=0)
    margin = (high - low).max() * CROP_MARGIN
    left, top = np.floor(np.maximum(low - margin, 0)).astype(int)
    right, bottom = np.ceil(np.minimum(high + margin, [width, height])).astype(int)
    crop = photo[top:bottom, left:right]
    landmarks = face.landmarks - np.array([left, top], dtype=np.float32)
    x, y, box_width, box_height = face.box
    crop = relit(crop, (x - left, y - top, box_width, box_height))

    scale = min(1.0, CROP_MAX_SIDE / max(crop.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        landmarks = landmarks * scale
    return SourceFace(image=np.ascontiguousarray(crop), landmarks=landmarks.astype(np.float32))


def encode_source_face(engine: str, source: SourceFace) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(source.image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InvalidInput("The face crop could not be encoded.")
    arrays: dict[str, np.ndarray] = {
        "crop_png": png.reshape(-1),
        "landmarks": source.landmarks.astype(np.float32),
    }
    return encode_state(engine, arrays)


def decode_source_face(engine: str, state: bytes) -> SourceFace:
    arrays = decode_state(state, engine, ("crop_png", "landmarks"), IDENTITY_STATE)
    png, landmarks = arrays["crop_png"], arrays["landmarks"]
    if png.dtype != np.uint8 or png.ndim != 1 or landmarks.shape != (LANDMARK_COUNT, 2):
        raise IDENTITY_STATE.corrupt()
    bgr = cv2.imdecode(png, cv2.IMREAD_COLOR)
    if bgr is None:
        raise IDENTITY_STATE.corrupt()
    return SourceFace(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), landmarks.astype(np.float32))


def _source_pyramid(source: SourceFace) -> list[SourceFace]:
    levels = [source]
    while min(levels[-1].image.shape[:2]) >= 2 * MIN_FACE_SIDE:
        previous = levels[-1]
        image = cv2.pyrDown(previous.image)
        scale = np.array(
            [image.shape[1] / previous.image.shape[1], image.shape[0] / previous.image.shape[0]],
            dtype=np.float32,
        )
        levels.append(SourceFace(image=image, landmarks=previous.landmarks * scale))
    return levels


def _face_size(landmarks: np.ndarray) -> float:
    extent = landmarks.max(axis=0) - landmarks.min(axis=0)
    return float(extent.max())


def _with_photo_shape(frame_face: np.ndarray, photo_face: np.ndarray) -> np.ndarray:
    """The frame's landmarks moved toward the photo's proportions by SHAPE_WEIGHTS.

    The photo's face is first fitted to the frame's on all 68 points, so its features keep
    their size and place relative to the whole face, outline included.
    """
    fit = umeyama_similarity(photo_face, frame_face)
    aligned = photo_face @ fit[:, :2].T + fit[:, 2]
    return (frame_face + SHAPE_WEIGHTS[:, None] * (aligned - frame_face)).astype(np.float32)


def _with_outer_ring(landmarks: np.ndarray) -> np.ndarray:
    outline = landmarks[np.concatenate([JAW, BROWS])]
    centre = landmarks.mean(axis=0)
    ring = centre + OUTER_RING_SCALE * (outline - centre)
    return np.vstack([landmarks, ring]).astype(np.float32)


def _triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles (n x 3 point indices), computed once on the photo's face."""
    low = np.floor(points.min(axis=0)) - 1
    high = np.ceil(points.max(axis=0)) + 1
    subdiv = cv2.Subdiv2D((int(low[0]), int(low[1]), int(high[0] - low[0]), int(high[1] - low[1])))
    subdiv.insert([(float(px), float(py)) for px, py in points])
    triangles = []
    for corners in np.asarray(subdiv.getTriangleList()).reshape(-1, 3, 2):
        # Subdiv2D answers in coordinates; coinciding points (a closed mouth's inner lips)
        # resolve to one index, and the triangles they would have spanned have no area.
        distances = np.linalg.norm(points[None, :, :] - corners[:, None, :], axis=2)
        indices = distances.argmin(axis=1)
        if len(set(indices.tolist())) == 3 and distances.min(axis=1).max() < 0.5:
            triangles.append(indices)
    return np.array(triangles, dtype=np.int32)


def _region_of(
    points: np.ndarray, frame_shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """The box around the points, clipped to the frame; None when nothing of it is inside."""
    height, width = frame_shape[:2]
    left, top = np.floor(points.min(axis=0)).astype(int)
    right, bottom = np.ceil(points.max(axis=0)).astype(int) + 1
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, width), min(bottom, height)
    if right - left < 2 or bottom - top < 2:
        return None
    return int(left), int(top), int(right - left), int(bottom - top)


def _face_mask(
    frame_face: np.ndarray, pasted_face: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """Where the photo's face replaces the frame's: 1 inside, feathered to 0 at the outline.

    It covers both the frame's own face and the reshaped one pasted on it, so none of the
    frame's brows or eyes peek out beside the pasted ones.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    centre = pasted_face.mean(axis=0)
    lifted_brows = centre + BROW_LIFT_SCALE * (pasted_face[BROWS] - centre)
    # The frame's outline is not lifted: above its brows the warp has only stretched forehead
    # and hairline of the photo to offer, which shows as a pale band.
    for outline in (np.vstack([pasted_face[JAW], lifted_brows]), frame_face[:27]):
        cv2.fillConvexPoly(mask, cv2.convexHull(np.rint(outline).astype(np.int32)), 255)
    # The frame's own mouth interior stays: its teeth and tongue move with the template.
    cv2.fillPoly(mask, [np.rint(frame_face[INNER_LIPS]).astype(np.int32)], 0)

    face_size = _face_size(frame_face)
    erosion = max(1, round(face_size * MASK_EROSION))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erosion + 1,) * 2)
    eroded = cv2.erode(mask, kernel)
    feather = max(1, round(face_size * MASK_FEATHER)) | 1
    return cv2.GaussianBlur(eroded.astype(np.float32) / 255.0, (2 * feather + 1,) * 2, 0)


def _skin_region(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean map of the face without eyes, brows and lips."""
    skin = np.ones(shape, dtype=np.uint8)
    for feature in (RIGHT_EYE, LEFT_EYE, OUTER_LIPS):
        points = landmarks[feature]
        centre = points.mean(axis=0)
        grown = centre + FEATURE_GROWTH * (points - centre)
        cv2.fillConvexPoly(skin, cv2.convexHull(np.rint(grown).astype(np.int32)), 0)
    stroke = max(2, round(_face_size(landmarks) * BROW_STROKE))
    brows = [np.rint(landmarks[brow]).astype(np.int32) for brow in (RIGHT_BROW, LEFT_BROW)]
    cv2.polylines(skin, brows, isClosed=False, color=0, thickness=stroke)
    return skin.astype(bool)


def _warp_piecewise_affine(
    source: np.ndarray,
    source_points: np.ndarray,
    target_points: np.ndarray,
    triangles: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """The source image resampled so each source triangle lands on its target triangle."""
    # Pixels outside every usable triangle follow the best similarity transform of the face.
    fallback = umeyama_similarity(target_points, source_points)
    # Each triangle's area in the frame relative to the photo, after the overall scale: a
    # turned head folds triangles over (negative) or squeezes them to slivers (the temple
    # between eye corner, brow end and ear), and either would paint a whole region of the
    # photo, hair included, as a streak. Those pixels take the similarity fallback instead.
    source_areas = signed_areas(source_points[triangles])
    target_areas = signed_areas(target_points[triangles])
    overall_scale = float(np.linalg.det(fallback[:, :2]))
    relative_areas = target_areas * overall_scale / np.where(source_areas == 0, 1e-6, source_areas)
    usable = (relative_areas > MIN_TRIANGLE_AREA_RATIO) & (np.abs(target_areas) > 0.5)
    pairs = ((target_points[t], source_points[t]) for t in triangles[usable])
    return warp_triangles(source, pairs, fallback, shape)
