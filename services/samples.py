"""Sample inputs for the demo and the tests: face photos taken from photos that ship in
installed wheels, and a voice recording made with espeak-ng over generated music.

The bundled templates show the public-domain astronaut portrait (scikit-image), so the sample
"user" photo must be someone else: a face cropped from the group photo that the insightface
wheel ships as its own sample image. It is located without importing insightface, whose import
needs packages this environment does not install.
"""

import importlib.util
from functools import lru_cache
from pathlib import Path

import cv2
import dlib
import numpy as np

from services.shared.errors import NotFound
from services.voice import mixes

GROUP_PHOTO = Path("data") / "images" / "t1.jpg"
PHOTO_SIDE = 400
# The face takes this share of the photo's width, as in an ordinary portrait.
FACE_WIDTH_FRACTION = 0.4


@lru_cache(maxsize=4)
def sample_face_photo(person: int = 0) -> np.ndarray:
    """A portrait (RGB, 400x400) of one person from the group photo, most clearly seen first."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise NotFound("The sample photos come with the insightface wheel: run make setup.")
    photo = cv2.cvtColor(cv2.imread(str(Path(spec.origin).parent / GROUP_PHOTO)), cv2.COLOR_BGR2RGB)
    boxes, scores, _ = dlib.get_frontal_face_detector().run(photo, 0, 0.0)
    ranked = [box for _, box in sorted(zip(scores, boxes, strict=True), key=lambda pair: -pair[0])]
    face = ranked[person]
    side = face.width() / FACE_WIDTH_FRACTION
    centre_x, centre_y = (face.left() + face.right()) / 2, (face.top() + face.bottom()) / 2
    scale = PHOTO_SIDE / side
    warp = np.array(
        [
            [scale, 0, PHOTO_SIDE / 2 - scale * centre_x],
            [0, scale, PHOTO_SIDE * 0.45 - scale * centre_y],
        ]
    )
    return cv2.warpAffine(
        photo, warp, (PHOTO_SIDE, PHOTO_SIDE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )


def sample_voice_recording(seconds: float = 20.0) -> bytes:
    """A WAV of synthetic speech (espeak-ng) over music made in code: a voice to extract."""
    return mixes.wav_bytes(mixes.make_mix("en-us", seconds, voice_to_music_db=3.0).mixture)
