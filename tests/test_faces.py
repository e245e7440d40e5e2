"""The dlib face stack on real photos: detection, landmarks and identity embeddings."""

import importlib.util
import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from services.shared.errors import EngineNotReady, InvalidInput
from services.shared.faces import (
    SAME_PERSON_DISTANCE,
    DetectedFace,
    FaceAnalyzer,
    default_analyzer,
    identity_distance,
)

# Where Eileen Collins' face is in skimage's astronaut.png (x, y, width, height).
ASTRONAUT_FACE = (175, 76, 90, 90)
# Four of the six faces in insightface's t1.jpg group photo, as dlib finds them at full
# resolution; the other two are tilted or turned too far for the HOG detector at 640 px.
T1_FACES = {
    "far_left": (65, 284, 104, 104),
    "centre_left": (452, 300, 125, 125),
    "top_right": (883, 89, 104, 104),
    "far_right": (1114, 284, 104, 104),
}


def insightface_image(name: str) -> np.ndarray:
    # Located without importing insightface, whose import needs packages we do not install.
    path = Path(importlib.util.find_spec("insightface").origin).parent / "data" / "images" / name
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two x, y, width, height boxes."""
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer()


@pytest.fixture(scope="module")
def group_photo() -> np.ndarray:
    return insightface_image("t1.jpg")


def test_detects_the_astronauts_face_where_it_is(analyzer):
    astronaut = data.astronaut()
    faces = analyzer.detect(astronaut)

    assert faces, "no face found in astronaut.png"
    face = faces[0]
    assert overlap(face.box, ASTRONAUT_FACE) > 0.6, face.box
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    x, y, width, height = face.box
    inside = (
        (face.landmarks[:, 0] > x - 0.2 * width)
        & (face.landmarks[:, 0] < x + 1.2 * width)
        & (face.landmarks[:, 1] > y - 0.2 * height)
        & (face.landmarks[:, 1] < y + 1.2 * height)
    )
    assert inside.all(), "landmarks are in the image's pixels, around the face"
    # Nose tip (30) below the eyes (36-47) and above the mouth (48-67).
    assert face.landmarks[36:48, 1].mean() < face.landmarks[30, 1] < face.landmarks[48:68, 1].mean()


def test_primary_face_outranks_a_weaker_false_detection(analyzer):
    # Upsampled, the HOG detector also fires on the flag patch on the suit, with a lower score.
    eager = FaceAnalyzer(upsample_below_side=2048)
    astronaut = data.astronaut()
    faces = eager.detect(astronaut)
    assert len(faces) >= 2
    assert [face.score for face in faces] == sorted((face.score for face in faces), reverse=True)

    primary = eager.primary_face(astronaut)
    assert overlap(primary.box, ASTRONAUT_FACE) > 0.6
    assert all(overlap(face.box, ASTRONAUT_FACE) < 0.1 for face in faces[1:])


def test_finds_the_small_faces_of_a_group_photo_in_full_resolution_pixels(analyzer, group_photo):
    # 1280 px wide: searched at 640 px, where its ~110 px faces are below the 80 px HOG window.
    faces = analyzer.detect(group_photo)

    assert len(faces) >= 4
    for name, expected in T1_FACES.items():
        best = max(overlap(face.box, expected) for face in faces)
        assert best > 0.4, f"{name} face not found near {expected}"


def test_no_face_in_a_photo_without_one(analyzer):
    assert analyzer.detect(data.coffee()) == []
    assert analyzer.primary_face(data.coffee()) is None


def test_same_face_embeddings_are_close(analyzer):
    astronaut = data.astronaut()
    smaller = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])

    reference = analyzer.identity_embedding(astronaut, analyzer.primary_face(astronaut))
    assert reference.shape == (128,)
    for variant in (smaller, mirrored):
        embedding = analyzer.identity_embedding(variant, analyzer.primary_face(variant))
        distance = identity_distance(reference, embedding)
        print(f"same person distance: {distance:.3f}")
        assert distance < 0.35


def test_different_people_are_far_apart(analyzer, group_photo):
    astronaut = data.astronaut()
    people = {"astronaut": analyzer.identity_embedding(astronaut, analyzer.primary_face(astronaut))}
    for face in analyzer.detect(group_photo):
        name = next((n for n, box in T1_FACES.items() if overlap(face.box, box) > 0.4), None)
        if name is not None and name not in people:
            people[name] = analyzer.identity_embedding(group_photo, face)
    assert len(people) == 1 + len(T1_FACES)

    for (name_a, a), (name_b, b) in itertools.combinations(people.items(), 2):
        distance = identity_distance(a, b)
        print(f"{name_a} vs {name_b}: {distance:.3f}")
        assert distance > SAME_PERSON_DISTANCE, f"{name_a} and {name_b} look alike"


def test_a_small_photo_is_searched_upsampled(analyzer):
    tom_hanks = insightface_image("Tom_Hanks_54745.png")  # 112 px, face below the HOG window
    face = analyzer.primary_face(tom_hanks)
    assert face is not None
    assert 50 < face.box[2] < 112


def test_concurrent_callers_get_the_same_answers(analyzer, group_photo):
    images = [data.astronaut(), group_photo, data.coffee()] * 2
    serial = [[f.box for f in analyzer.detect(image)] for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda image: [f.box for f in analyzer.detect(image)], images))
    assert parallel == serial


def test_detected_faces_are_immutable(analyzer):
    face = analyzer.primary_face(data.astronaut())
    assert isinstance(face, DetectedFace)
    with pytest.raises(AttributeError):
        face.score = 0.0


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), dtype=np.uint8),
        np.zeros((64, 64, 4), dtype=np.uint8),
        np.zeros((64, 64, 3), dtype=np.float32),
        np.zeros((0, 64, 3), dtype=np.uint8),
    ],
    ids=["greyscale", "rgba", "float", "empty"],
)
def test_images_that_are_not_rgb_uint8_are_refused(analyzer, image):
    with pytest.raises(InvalidInput):
        analyzer.detect(image)


def test_missing_model_files_mean_not_ready(tmp_path):
    with pytest.raises(EngineNotReady):
        FaceAnalyzer(models_dir=tmp_path).load()


def test_the_default_analyzer_is_shared():
    assert default_analyzer() is default_analyzer()
