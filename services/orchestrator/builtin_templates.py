"""The bundled GIF templates, rendered at set-up from a photo that ships in an installed wheel.

Nothing is downloaded: scikit-image carries `astronaut.png`, NASA's public-domain portrait of
Eileen Collins. Her face is cropped head-and-shoulders and animated with smooth, looping head
motions (tilt, nod, drift, zoom), so every template has a real face moving the way a head does.
A public-domain portrait keeps the bundled content free of anyone's likeness rights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import dlib
import numpy as np
from skimage import data as skimage_data

from services.shared.errors import EngineNotReady, NotFound, shown
from services.shared.video import GifEncoder, Mp4Encoder

FRAME_SIZE = 320
FRAME_COUNT = 42
FPS = 12  # 42 frames at 12 fps: a 3.5 s loop

# Head and shoulders: the face is 40% of the frame width, its centre 45% of the way down.
FACE_WIDTH_FRACTION = 0.40
FACE_CENTRE_HEIGHT = 0.45
# How far below the face centre, in face widths, the head pivots: roughly the top of the neck.
NECK_PIVOT_OFFSET = 0.9
# Room kept between the crop and the photo's border so that the motion shows real pixels
# rather than mirrored ones wherever the photo allows it.
MOTION_MARGIN_FRACTION = 0.04


@dataclass(frozen=True)
class BuiltinTemplate:
    template_id: str
    display_name: str


@dataclass(frozen=True)
class HeadMotion:
    """A looping head movement; every term completes whole cycles in one loop, so it is seamless.

    Amplitudes are peak values: degrees of roll, pixels of the 320 px frame, fractions of scale.
    """

    tilt_degrees: float
    drift_pixels: float
    nod_pixels: float
    nod_cycles: int
    zoom: float
    pitch_squash: float  # vertical shortening as the head nods forward, a hint of pitch

    def pose(self, phase: float) -> tuple[float, float, float, float, float]:
        """Angle, scale, vertical squash, dx, dy at `phase` in [0, 1) of the loop."""
        turn = 2 * math.pi * phase
        nod = math.sin(self.nod_cycles * turn)
        angle = self.tilt_degrees * math.sin(turn)
        scale = 1 + self.zoom * math.sin(turn + math.pi / 3)
        squash = 1 - self.pitch_squash * max(nod, 0.0)
        dx = self.drift_pixels * math.sin(turn + math.pi / 6)
        dy = self.nod_pixels * nod
        return angle, scale, squash, dx, dy


@dataclass(frozen=True)
class _Recipe:
    person: int  # index among the chosen faces, left to right in the photo
    motion: HeadMotion


_RECIPES: dict[str, _Recipe] = {
    "astronaut-sway": _Recipe(
        person=0,
        motion=HeadMotion(
            tilt_degrees=5.0, drift_pixels=5.0, nod_pixels=1.5, nod_cycles=2, zoom=0.02,
            pitch_squash=0.0,
        ),
    ),
    "astronaut-nod": _Recipe(
        person=0,
        motion=HeadMotion(
            tilt_degrees=2.0, drift_pixels=2.0, nod_pixels=5.0, nod_cycles=2, zoom=0.03,
            pitch_squash=0.03,
        ),
    ),
    "astronaut-tilt-zoom": _Recipe(
        person=0,
        motion=HeadMotion(
            tilt_degrees=4.0, drift_pixels=3.0, nod_pixels=3.0, nod_cycles=1, zoom=0.04,
            pitch_squash=0.0,
        ),
    ),
}  # fmt: skip

BUILTIN_GIF_TEMPLATES: tuple[BuiltinTemplate, ...] = (
    BuiltinTemplate("astronaut-sway", "Astronaut, gentle sway"),
    BuiltinTemplate("astronaut-nod", "Astronaut, nodding"),
    BuiltinTemplate("astronaut-tilt-zoom", "Astronaut, head tilt and zoom"),
)


def render_builtin_gif(template_id: str, path: Path) -> None:
    """Write the built-in template `template_id` as a looping GIF; same id, same file."""
    recipe = _RECIPES.get(template_id)
    if recipe is None:
        known = ", ".join(template.template_id for template in BUILTIN_GIF_TEMPLATES)
        raise NotFound(
            f"There is no built-in template {shown(template_id)}; the built-ins are {known}."
        )
    photo, faces = _source_faces()
    with GifEncoder(path, FRAME_SIZE, FRAME_SIZE, FPS, FRAME_COUNT) as gif:
        for frame in animate_head(photo, faces[recipe.person], recipe.motion):
            gif.write(frame)


# The MP4 track's built-in template: the same portrait, held for 30 s of gentle head motion
# (a 4 s loop), for the user's face and voice to bring to life.
VIDEO_SECONDS, VIDEO_FPS = 30, 25
BUILTIN_VIDEO_TEMPLATES: tuple[BuiltinTemplate, ...] = (
    BuiltinTemplate("astronaut-talk", "Astronaut, talking to camera (30 s)"),
)
_VIDEO_MOTION = HeadMotion(
    tilt_degrees=2.5, drift_pixels=3.0, nod_pixels=2.0, nod_cycles=2, zoom=0.015, pitch_squash=0.0
)


def render_builtin_video(template_id: str, path: Path) -> None:
    """Write the built-in video template `template_id` as a silent H.264 MP4."""
    if template_id not in {template.template_id for template in BUILTIN_VIDEO_TEMPLATES}:
        raise NotFound(f"There is no built-in video template {shown(template_id)}.")
    photo, faces = _source_faces()
    frames = animate_head(photo, faces[0], _VIDEO_MOTION, VIDEO_SECONDS * VIDEO_FPS, 4 * VIDEO_FPS)
    with Mp4Encoder(path, FRAME_SIZE, FRAME_SIZE, VIDEO_FPS) as video:
        for frame in frames:
            video.write(frame)


def render_all(out_dir: Path) -> list[Path]:
    """Render every built-in template into `out_dir` as `{template_id}.gif`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for template in BUILTIN_GIF_TEMPLATES:
        path = out_dir / f"{template.template_id}.gif"
        render_builtin_gif(template.template_id, path)
        paths.append(path)
    return paths


def animate_head(
    photo: np.ndarray,
    face: dlib.rectangle,
    motion: HeadMotion,
    frame_count: int = FRAME_COUNT,
    loop_frames: int = FRAME_COUNT,
) -> Iterator[np.ndarray]:
    """`frame_count` square frames of the head around `face`, moving along `motion`, whose
    loop lasts `loop_frames`.

    Each frame is one affine warp straight from the full photo (crop, upscale and motion in a
    single resampling), so pixels beyond the crop come from the photo itself.
    """
    face_x = (face.left() + face.right()) / 2
    face_y = (face.top() + face.bottom()) / 2
    crop_side = face.width() / FACE_WIDTH_FRACTION
    base_scale = FRAME_SIZE / crop_side

    # Keep the crop inside the photo when the face is near its edge, at the cost of an
    # off-centre face, instead of showing a mirrored border.
    margin = MOTION_MARGIN_FRACTION * crop_side
    above, below = crop_side * FACE_CENTRE_HEIGHT, crop_side * (1 - FACE_CENTRE_HEIGHT)
    photo_height, photo_width = photo.shape[:2]
    centre_x = _clamp(face_x, crop_side / 2 + margin, photo_width - crop_side / 2 - margin)
    centre_y = _clamp(face_y, above + margin, photo_height - below - margin)
    pivot = np.array([face_x, face_y + NECK_PIVOT_OFFSET * face.width()])
    pivot_at_rest = np.array(
        [
            FRAME_SIZE / 2 + (pivot[0] - centre_x) * base_scale,
            FRAME_SIZE * FACE_CENTRE_HEIGHT + (pivot[1] - centre_y) * base_scale,
        ]
    )

    for index in range(frame_count):
        angle, scale, squash, dx, dy = motion.pose((index % loop_frames) / loop_frames)
        radians = math.radians(angle)
        # Image coordinates (y down): a positive angle turns the head anticlockwise on screen.
        rotation = np.array(
            [[math.cos(radians), math.sin(radians)], [-math.sin(radians), math.cos(radians)]]
        )
        linear = base_scale * scale * rotation @ np.diag([1.0, squash])
        offset = pivot_at_rest + np.array([dx, dy]) - linear @ pivot
        warp = np.hstack([linear, offset[:, np.newaxis]])
        yield cv2.warpAffine(
            photo, warp, (FRAME_SIZE, FRAME_SIZE),
            flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT,
        )  # fmt: skip


def _clamp(value: float, low: float, high: float) -> float:
    if low > high:  # the photo is smaller than the crop: centre on the face
        return value
    return min(max(value, low), high)


@lru_cache(maxsize=1)
def _source_faces() -> tuple[np.ndarray, tuple[dlib.rectangle, ...]]:
    """The source photo (RGB) and the face used."""
    photo = skimage_data.astronaut()
    detector = dlib.get_frontal_face_detector()
    boxes, scores, _ = detector.run(photo, 1, 0.0)
    if not boxes:
        raise EngineNotReady("No face found in the bundled portrait: reinstall scikit-image.")
    # The most confident detection is the face; a weaker one fires on the mission patch.
    best = max(range(len(boxes)), key=lambda index: scores[index])
    return photo, (boxes[best],)
