"""Which face of an image to use: the main face, unless the caller names one.

A photo can hold more than the person it is for: an inset portrait, a bystander, a group.
The main face is the most prominent one, where

    prominence = size x (1 - CENTRALITY_WEIGHT x offset) x min(1, score / (DOUBTFUL_SHARE x best))

size being the larger side of the face's box (px), offset the distance from the face's centre
to the image's centre as a share of the half-diagonal (0 in the middle, 1 in a corner), and
best the highest score among the image's faces. Size leads because people frame the subject
they mean large; centrality settles faces of about one size, since the subject is framed in
the middle and bystanders at the edges: a face in a corner counts as half its size.

The detector's score does not rank faces: it says how face-like a patch is (frontal, sharp,
evenly lit), not whose photo it is, and a small bystander looking into the camera outscores a
subject turned a little (measured: a 105 px inset scored 2.57, the 309 px face beside it
1.82). It only discounts faces the detector is far less sure of than of the best one, in
proportion: dlib's false detections (a suit's flag patch, as large as the face above it)
score 0.0-0.12 where the real face scores 1.2-1.5, so they keep under half their weight, while
a subject turned away (0.4 beside a frontal 2.5) keeps two thirds of its weight. SCRFD's
scores (0.6-1.0 past its threshold) are never discounted. Exact ties go to the higher score.

A photo becomes an identity, so it is held to more than a template frame: when the runner-up
is nearly as prominent as the main face, the photo is refused until a face is named, since
swapping the wrong person is worse than asking; a face too small or too badly exposed to
carry its features is refused with what to do instead. Template frames take their main face
without asking, and a FaceTracker keeps a stream on one person from frame to frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import cv2
import numpy as np

from services.shared.engines import Box
from services.shared.errors import FailedPrecondition, InvalidInput

# A named face: its index among the faces ordered left to right, or a box around it.
FaceChoice = int | Box

# A face in a corner counts as this much smaller than the same face in the middle.
CENTRALITY_WEIGHT = 0.5
# A face scoring under this share of the best face's score is discounted in proportion.
DOUBTFUL_SHARE = 0.25
# A runner-up at least this prominent next to the main face leaves the choice to the caller.
SIMILAR_PROMINENCE = 0.8
# Smaller photo faces (larger box side, px) are refused: they are upscaled 2x and more onto
# the built-in templates' ~128 px faces. Measured with the landmark warp onto the astronaut's
# 88 px face, three sample people: distance to the person 0.44-0.46 from 63-90 px photo
# faces, 0.47-0.52 from 37-44 px ones.
MIN_PHOTO_FACE_SIDE = 64
# Exposure of the face's box, in 8-bit luma, measured on four sample people brightened and
# darkened, swapped by the landmark warp: with 43-58% of the face blown out (>= 250) two of
# them lost their likeness, with 42% or less none did; at a spread of 5 one of them did, at
# 9-10 none did (a dim face is relit before it is used, a flat one has nothing to stretch).
MAX_BLOWN_OUT_SHARE = 0.35
BLOWN_OUT_LUMA = 250
MIN_FACE_LUMA_SPREAD = 6.0
# A photo with no face found and a mean luma beyond these is named too dark or too light.
DARK_PHOTO_LUMA, LIGHT_PHOTO_LUMA = 25.0, 235.0
# A face in the next frame is the followed one when its centre is within this share of the
# followed face's size of where that was: heads move far less between frames, and two
# people's faces are about a face apart.
TRACK_REACH = 0.5
# Faces listed in a message about a box that matches none: enough to see where they are.
LISTED_FACES = 8

NO_FACE = "No face found in the photo: use a well-lit, front-facing photo of one person."


class Detection(Protocol):
    """What every detector's face has: where it is and how face-like it looked."""

    @property
    def box(self) -> Box: ...

    @property
    def score(self) -> float: ...


FaceT = TypeVar("FaceT", bound=Detection)


def face_side(box: Box) -> int:
    return max(box[2], box[3])


def left_to_right(faces: Sequence[FaceT]) -> list[FaceT]:
    """Faces in the order indices name them: by their box centre, left to right."""
    return sorted(faces, key=lambda face: (_centre(face.box)[0], _centre(face.box)[1]))


def prominence(face: Detection, image_shape: tuple[int, ...], best_score: float) -> float:
    """How much a face is the image's subject: its size, less for being off-centre and for
    scoring far below the image's best face (see the module's docstring)."""
    height, width = image_shape[:2]
    centre_x, centre_y = _centre(face.box)
    half_diagonal = max(np.hypot(width, height) / 2, 1.0)
    offset = min(float(np.hypot(centre_x - width / 2, centre_y - height / 2)) / half_diagonal, 1.0)
    doubt = 1.0
    if best_score > 0:
        doubt = min(1.0, max(face.score, 0.0) / (DOUBTFUL_SHARE * best_score))
    return face_side(face.box) * (1.0 - CENTRALITY_WEIGHT * offset) * doubt


def main_face(faces: Sequence[FaceT], image_shape: tuple[int, ...]) -> FaceT | None:
    """The most prominent face, the higher score on a tie; None without faces."""
    ranked = _ranked(faces, image_shape)
    return ranked[0][1] if ranked else None


def photo_face(faces: Sequence[FaceT], photo: np.ndarray, choice: FaceChoice | None) -> FaceT:
    """The face of a photo to make an identity of: the named one, else the main one.

    Raises FailedPrecondition when there is no face, when no face stands out and none is
    named, or when the face is too small or too badly exposed; InvalidInput when the named
    index or box matches no face.
    """
    if not faces:
        raise FailedPrecondition(_no_face_message(photo))
    face = _unnamed_main(faces, photo.shape) if choice is None else _named(faces, choice)
    side = face_side(face.box)
    if side < MIN_PHOTO_FACE_SIDE:
        raise FailedPrecondition(
            f"The face is {side} px across, under the {MIN_PHOTO_FACE_SIDE} px minimum a face "
            "needs to carry its features: use a closer or higher-resolution photo."
        )
    _check_exposure(photo, face.box)
    return face


class FaceTracker:
    """Follows one face through a stream's frames.

    Choosing the main face anew in every frame would move the identity between two people of
    about one size whenever their sizes cross; the tracker starts on the main face and then
    takes, in each frame, the face nearest where the followed one was. A frame with faces but
    none near (a cut, the person left) starts again on its main face; a frame without faces
    (a missed detection, motion blur) keeps the place.
    """

    def __init__(self) -> None:
        self._box: Box | None = None

    def follow(
        self, faces: Sequence[FaceT], image_shape: tuple[int, ...]
    ) -> tuple[FaceT | None, bool]:
        """This frame's face, and whether it is the face followed so far."""
        followed = self._nearest(faces)
        if followed is not None:
            self._box = followed.box
            return followed, True
        main = main_face(faces, image_shape)
        if main is not None:
            self._box = main.box
        return main, False

    def _nearest(self, faces: Sequence[FaceT]) -> FaceT | None:
        if self._box is None or not faces:
            return None
        last_x, last_y = _centre(self._box)
        distances = [
            np.hypot(_centre(face.box)[0] - last_x, _centre(face.box)[1] - last_y) for face in faces
        ]
        nearest = int(np.argmin(distances))
        return faces[nearest] if distances[nearest] <= TRACK_REACH * face_side(self._box) else None


def _ranked(faces: Sequence[FaceT], image_shape: tuple[int, ...]) -> list[tuple[float, FaceT]]:
    """Faces with their prominence, most prominent first."""
    best_score = max((face.score for face in faces), default=0.0)
    weighed = [(prominence(face, image_shape, best_score), face) for face in faces]
    return sorted(weighed, key=lambda pair: (pair[0], pair[1].score), reverse=True)


def _unnamed_main(faces: Sequence[FaceT], image_shape: tuple[int, ...]) -> FaceT:
    # Faces too small to use do not make the choice ambiguous; if all are, the largest is
    # refused for its size.
    usable = [face for face in faces if face_side(face.box) >= MIN_PHOTO_FACE_SIDE] or faces
    ranked = _ranked(usable, image_shape)
    if len(ranked) > 1 and ranked[1][0] >= SIMILAR_PROMINENCE * ranked[0][0]:
        raise FailedPrecondition(
            f"Found {len(faces)} faces in the photo and none stands out as the main one: "
            "name the face to use in face_choice, by index (0 is the leftmost) or by a box "
            "around it; MediaService.DetectFaces lists the faces."
        )
    return ranked[0][1]


def _named(faces: Sequence[FaceT], choice: FaceChoice) -> FaceT:
    ordered = left_to_right(faces)
    if isinstance(choice, int):
        if not 0 <= choice < len(ordered):
            raise InvalidInput(
                f"face_choice.index {choice} matches no face: the photo has {len(ordered)} "
                f"face(s), numbered 0 to {len(ordered) - 1} from the left."
            )
        return ordered[choice]
    x, y, width, height = choice
    if width <= 0 or height <= 0:
        raise InvalidInput("face_choice.box needs a positive width and height.")
    inside = [
        face
        for face in ordered
        if x <= _centre(face.box)[0] < x + width and y <= _centre(face.box)[1] < y + height
    ]
    if not inside:
        boxes = ", ".join(str(face.box) for face in ordered[:LISTED_FACES])
        raise InvalidInput(
            f"face_choice.box {choice} holds the centre of no face; the photo's faces "
            f"(x, y, width, height): {boxes}."
        )
    return max(inside, key=lambda face: _overlap(face.box, choice))


def _check_exposure(photo: np.ndarray, box: Box) -> None:
    x, y, width, height = box
    region = photo[y : y + height, x : x + width]
    if region.size == 0:
        return
    luma = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    blown_out = float((luma >= BLOWN_OUT_LUMA).mean())
    if blown_out > MAX_BLOWN_OUT_SHARE:
        raise FailedPrecondition(
            f"The face is overexposed: {blown_out:.0%} of it is pure white, where its features "
            "are lost. Use a photo without flash glare or direct sun on the face."
        )
    if float(luma.std()) < MIN_FACE_LUMA_SPREAD:
        tone = "dark" if luma.mean() < 128 else "light"
        raise FailedPrecondition(
            f"The face is too {tone} to make out (one flat tone, brightness "
            f"{luma.mean():.0f} of 255): use a well-lit photo."
        )


def _no_face_message(photo: np.ndarray) -> str:
    brightness = float(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).mean())
    if brightness < DARK_PHOTO_LUMA or brightness > LIGHT_PHOTO_LUMA:
        tone = "dark" if brightness < DARK_PHOTO_LUMA else "light"
        return (
            f"No face found in the photo, which is very {tone} (brightness {brightness:.0f} "
            "of 255): use a well-lit, front-facing photo of one person."
        )
    return NO_FACE


def _centre(box: Box) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def _overlap(a: Box, b: Box) -> int:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)
