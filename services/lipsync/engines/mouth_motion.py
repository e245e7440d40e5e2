"""The embedded lip sync engine: audio-driven mouth motion, nothing to download.

Audio (once per job): the voice's loudness in the speech band (150-4000 Hz) every 10 ms, in dB
above the recording's own noise floor, becomes a mouth opening in [0, 1] (fast to open, slower
to close, as jaws move); the spectral centroid becomes a lip spread in [-1, 1] (bright sounds
such as "ee" or "s" spread the lips, dark ones such as "oo" round them). Only loudness and
spectral shape are used, so any language works.

Frames: dlib's 68 landmarks of the main face; the jaw, the lower lip and the inner lips move
along the face's own axes by the frame's opening (the upper lip a little up, the lower lip and
chin down, the corners out or in by the spread), and the lower face is warped piecewise-affinely
from the landmarks to their moved positions inside a fixed ring, so nothing outside the lower
face moves. The gap between the inner lips is darkened as the mouth opens, feathered at its edge.
"""

from __future__ import annotations

import cv2
import librosa
import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.spatial import Delaunay

from services.lipsync.engines.base import (
    FEATURES_STATE,
    SAMPLE_RATE,
    AudioFeatures,
    LipSyncEngine,
)
from services.shared.engine_state import check_owner, decode_state, encode_state
from services.shared.engines import FrameResult, FrameStream
from services.shared.face_blend import blend
from services.shared.face_geometry import signed_areas, warp_triangles
from services.shared.faces import (
    CHIN,
    INNER_LEFT,
    INNER_LIPS,
    INNER_RIGHT,
    JAW,
    LOWER_INNER_LIPS,
    LOWER_OUTER_LIPS,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_BRIDGE,
    NOSE_TIP,
    UPPER_INNER_LIPS,
    UPPER_OUTER_LIPS,
    FaceAnalyzer,
    default_analyzer,
)

# Audio analysis: 25 ms windows every 10 ms.
HOP = SAMPLE_RATE // 100
WINDOW = 400
FEATURE_RATE = SAMPLE_RATE / HOP
SPEECH_BAND_HZ = (150.0, 4000.0)
# The noise floor is a low percentile of the frame levels, the full opening a high one; a
# recording whose levels span less than this is treated as silence.
FLOOR_PERCENTILE, PEAK_PERCENTILE = 10.0, 97.0
MIN_DYNAMIC_RANGE_DB = 6.0
# Levels this far above the floor still leave the mouth shut (breath, room noise).
GATE_DB = 3.0
# A syllable's neighbourhood (frames of 10 ms), how far below its peak a frame must fall to
# close the mouth by SYLLABLE_WEIGHT, and that weight.
SYLLABLE_FRAMES = 25
SYLLABLE_DEPTH_DB = 12.0
SYLLABLE_WEIGHT = 0.5
# Jaw dynamics: one-pole smoothing, time constants in seconds.
OPEN_TIME_CONSTANT = 0.025
CLOSE_TIME_CONSTANT = 0.06
# Spectral centroid (Hz) mapped to spread -1 .. 1 around the middle of speech.
CENTROID_ROUND_HZ, CENTROID_SPREAD_HZ = 800.0, 3000.0

# Motion at full opening, as fractions of the mouth's width (a wide-open speaking mouth has an
# inner-lip gap of about a third of its width); the lower lip and chin carry most of it.
MAX_GAP = 0.32
UPPER_LIP_SHARE = 0.15
LOWER_LIP_SHARE = 1.0 - UPPER_LIP_SHARE
CORNER_DROP = 0.35  # the corners follow the lower lip part way
CHIN_SHARE = 0.75  # the chin moves this much of the lower lip's motion
JAW_REACH = 5  # jaw points this far from the chin (in indices) still move, tapering to 0
MAX_SPREAD = 0.08  # each corner moves out (or in) by this much of the width
# The fixed ring: jaw points pushed out from the nose tip, so the warp stays inside the face
# and fades out over the cheeks and the neck.
RING_SCALE = 1.45
# The inner mouth: darkest colour (RGB, a shaded mouth cavity), its strength at full opening,
# and the feather of its edge as a fraction of the mouth width.
MOUTH_CAVITY_RGB = np.array([52.0, 22.0, 24.0], dtype=np.float32)
CAVITY_STRENGTH = 0.75
CAVITY_FEATHER = 0.06
# Mouths narrower than this (px) are too small to move; such frames pass through.
MIN_MOUTH_WIDTH = 8.0


class MouthMotionEngine(LipSyncEngine):
    name = "mouth_motion"

    def __init__(self, analyzer: FaceAnalyzer | None = None) -> None:
        self.analyzer = analyzer
        self.device = "cpu"

    def load(self) -> None:
        self.analyzer = self.analyzer or default_analyzer()
        self.analyzer.load()

    def prepare_audio(self, samples: np.ndarray) -> AudioFeatures:
        opening, spread = voice_articulation(samples)
        state = encode_state(
            self.name,
            {"opening": opening.astype(np.float32), "spread": spread.astype(np.float32)},
            compress=True,
        )
        return AudioFeatures(self.name, state, len(samples) / SAMPLE_RATE)

    def start_stream(self, features: AudioFeatures, fps: float) -> FrameStream:
        check_owner(features.engine, self.name, FEATURES_STATE)
        arrays = decode_state(features.state, self.name, ("opening", "spread"), FEATURES_STATE)
        opening, spread = arrays["opening"], arrays["spread"]
        if opening.ndim != 1 or opening.shape != spread.shape:
            raise FEATURES_STATE.corrupt()
        return MouthMotionSyncer(self.analyzer or default_analyzer(), opening, spread, fps)

    def close(self) -> None:
        # The analyzer is shared by the whole process; it lives as long as the process does.
        pass


def voice_articulation(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mouth opening in [0, 1] and lip spread in [-1, 1], every 10 ms of the voice."""
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) < WINDOW:
        samples = np.pad(samples, (0, WINDOW - len(samples)))
    power = np.abs(librosa.stft(samples, n_fft=WINDOW, hop_length=HOP, center=True)) ** 2
    frequencies = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=WINDOW)
    band = (frequencies >= SPEECH_BAND_HZ[0]) & (frequencies <= SPEECH_BAND_HZ[1])
    band_power = power[band].sum(axis=0)
    level_db = 10.0 * np.log10(band_power + 1e-10)

    floor = np.percentile(level_db, FLOOR_PERCENTILE)
    peak = np.percentile(level_db, PEAK_PERCENTILE)
    if peak - floor < MIN_DYNAMIC_RANGE_DB:
        silent = np.zeros(len(level_db), dtype=np.float32)
        return silent, silent.copy()
    target = np.clip((level_db - floor - GATE_DB) / (peak - floor - GATE_DB), 0.0, 1.0)
    # Syllables: a frame well below the loudest of its neighbourhood (a consonant between two
    # vowels) closes the mouth part way, so steady speech still moves the jaw.
    local_peak = maximum_filter1d(level_db, size=SYLLABLE_FRAMES, mode="nearest")
    syllable = np.clip((level_db - local_peak + SYLLABLE_DEPTH_DB) / SYLLABLE_DEPTH_DB, 0.0, 1.0)
    target = target * (1.0 - SYLLABLE_WEIGHT + SYLLABLE_WEIGHT * syllable)
    opening = _jaw_smoothing(target)

    centroid = (frequencies[band, None] * power[band]).sum(axis=0) / (band_power + 1e-10)
    middle = (CENTROID_ROUND_HZ + CENTROID_SPREAD_HZ) / 2
    half_range = (CENTROID_SPREAD_HZ - CENTROID_ROUND_HZ) / 2
    spread = np.clip((centroid - middle) / half_range, -1.0, 1.0) * np.minimum(1.0, target * 2)
    spread = _jaw_smoothing(spread, symmetric=True)
    return opening.astype(np.float32), spread.astype(np.float32)


def _jaw_smoothing(values: np.ndarray, symmetric: bool = False) -> np.ndarray:
    open_alpha = 1.0 - np.exp(-1.0 / (FEATURE_RATE * OPEN_TIME_CONSTANT))
    close_alpha = 1.0 - np.exp(-1.0 / (FEATURE_RATE * CLOSE_TIME_CONSTANT))
    smoothed = np.empty_like(values, dtype=np.float64)
    state = 0.0
    for index, value in enumerate(values):
        rising = value > state and not symmetric
        state += (open_alpha if rising else close_alpha) * (value - state)
        smoothed[index] = state
    return smoothed


def articulation_at(track: np.ndarray, frame_index: int, fps: float) -> float:
    """The mean of a 10 ms track over a video frame's display time; 0 past the voice's end."""
    start = int(frame_index * FEATURE_RATE / fps)
    stop = max(start + 1, int((frame_index + 1) * FEATURE_RATE / fps))
    window = track[start:stop]
    return float(window.mean()) if len(window) else 0.0


class MouthMotionSyncer(FrameStream):
    def __init__(
        self, analyzer: FaceAnalyzer, opening: np.ndarray, spread: np.ndarray, fps: float
    ) -> None:
        self.analyzer = analyzer
        self.opening = opening
        self.spread = spread
        self.fps = fps
        self.frame_index = 0

    def process(self, frame: np.ndarray) -> FrameResult:
        index = self.frame_index
        self.frame_index += 1
        face = self.analyzer.primary_face(frame)
        if face is None:
            return FrameResult.unchanged(frame)
        landmarks = face.landmarks.astype(np.float64)
        if np.linalg.norm(landmarks[MOUTH_RIGHT] - landmarks[MOUTH_LEFT]) < MIN_MOUTH_WIDTH:
            return FrameResult.unchanged(frame)
        opening = articulation_at(self.opening, index, self.fps)
        spread = articulation_at(self.spread, index, self.fps)
        moved = articulate(landmarks, opening, spread)
        image = move_mouth(frame, landmarks, moved, opening)
        return FrameResult(image=image, face_found=True, box=_mouth_box(moved, frame.shape))


def articulate(landmarks: np.ndarray, opening: float, spread: float) -> np.ndarray:
    """The 68 landmarks with the mouth opened by `opening` and spread by `spread`."""
    down = landmarks[CHIN] - landmarks[NOSE_BRIDGE]
    down /= max(float(np.linalg.norm(down)), 1e-6)
    across = landmarks[MOUTH_RIGHT] - landmarks[MOUTH_LEFT]
    width = max(float(np.linalg.norm(across)), 1e-6)
    across /= width
    gap = MAX_GAP * width * opening
    moved = landmarks.copy()
    upper, lower = -UPPER_LIP_SHARE * gap * down, LOWER_LIP_SHARE * gap * down
    moved[UPPER_INNER_LIPS] += upper
    moved[UPPER_OUTER_LIPS] += upper * 0.6
    moved[LOWER_INNER_LIPS] += lower
    # The outer lower lip's middle follows fully, its sides less (the lip's curve).
    moved[LOWER_OUTER_LIPS] += lower * np.array([0.6, 0.9, 1.0, 0.9, 0.6])[:, None]
    corner_shift = CORNER_DROP * lower
    spread_shift = MAX_SPREAD * width * spread * across
    moved[[MOUTH_LEFT, INNER_LEFT]] += corner_shift - spread_shift
    moved[[MOUTH_RIGHT, INNER_RIGHT]] += corner_shift + spread_shift
    for point in JAW:
        reach = max(0.0, 1.0 - abs(point - CHIN) / JAW_REACH)
        moved[point] += CHIN_SHARE * lower * reach
    return moved


def move_mouth(
    frame: np.ndarray, landmarks: np.ndarray, moved: np.ndarray, opening: float
) -> np.ndarray:
    """The frame with its lower face warped from `landmarks` to `moved`, mouth darkened."""
    if opening <= 1e-3:
        return frame
    ring = landmarks[NOSE_TIP] + RING_SCALE * (landmarks[JAW] - landmarks[NOSE_TIP])
    source = np.vstack([landmarks, ring])
    target = np.vstack([moved, ring])
    height, width = frame.shape[:2]
    x0, y0 = np.floor(np.maximum(target.min(axis=0), 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(target.max(axis=0) + 1, [width, height])).astype(int)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return frame
    origin = np.array([x0, y0], dtype=np.float64)
    patch = _warp_piecewise_affine(
        frame, source, target - origin, origin, (int(y1 - y0), int(x1 - x0))
    )
    patch = _darken_mouth(patch, moved[INNER_LIPS] - origin, opening, moved)
    result = frame.copy()
    result[y0:y1, x0:x1] = patch
    return result


def _warp_piecewise_affine(
    frame: np.ndarray,
    source: np.ndarray,
    target: np.ndarray,
    origin: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """The patch at `origin` of the frame resampled so each source triangle lands on its target.

    Pixels outside the triangulated area sample themselves (identity), so the ring stays put.
    """
    identity = np.array([[1, 0, origin[0]], [0, 1, origin[1]]], dtype=np.float64)
    triangles = Delaunay(target).simplices
    usable = np.abs(signed_areas(target[triangles])) >= 5e-4
    pairs = ((target[t], source[t]) for t in triangles[usable])
    return warp_triangles(frame, pairs, identity, shape)


def _darken_mouth(
    patch: np.ndarray, inner_lips: np.ndarray, opening: float, moved: np.ndarray
) -> np.ndarray:
    mouth_width = float(np.linalg.norm(moved[MOUTH_RIGHT] - moved[MOUTH_LEFT]))
    scale = 4  # polygon drawn at 1/4 px for a smooth edge
    mask = np.zeros(patch.shape[:2], dtype=np.float32)
    polygon = np.rint(inner_lips * scale).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 1.0, lineType=cv2.LINE_AA, shift=2)
    feather = max(1.0, CAVITY_FEATHER * mouth_width)
    soft_edge = cv2.GaussianBlur(mask, (0, 0), feather / 2)
    strength = CAVITY_STRENGTH * min(1.0, opening * 1.5)
    cavity = np.broadcast_to(MOUTH_CAVITY_RGB, patch.shape)
    return blend(cavity, patch, soft_edge * strength)


def _mouth_box(moved: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    mouth = moved[np.r_[MOUTH_LEFT:68, CHIN]]
    height, width = shape[:2]
    x0, y0 = np.clip(np.floor(mouth.min(axis=0)), 0, [width - 1, height - 1]).astype(int)
    x1, y1 = np.clip(np.ceil(mouth.max(axis=0)), 0, [width - 1, height - 1]).astype(int)
    return int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)
