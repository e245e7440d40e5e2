"""The embedded landmark-warp engine on real photos, and the engine registry as the server
uses it."""

import importlib.util
import io
import time
from dataclasses import replace
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from remind.v1 import faceswap_pb2, media_pb2
from skimage import data

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceIdentity
from services.faceswap.engines.landmark_warp import (
    LandmarkSmoother,
    LandmarkWarpEngine,
    SourceFace,
    decode_source_face,
)
from services.faceswap.engines.registry import engine_factories
from services.shared import images
from services.shared.errors import FailedPrecondition, InvalidInput
from services.shared.faces import FaceAnalyzer, default_analyzer, identity_distance

TEMPLATE_SIDE = 320
# Faces in insightface's t1.jpg group photo (x, y, side), as dlib finds them: three people
# looking roughly at the camera, the kind of face a GIF template shows.
T1_FACES = {
    "far_right": (1114, 284, 104),
    "centre_left": (452, 300, 125),
    "far_left": (65, 284, 104),
}


def insightface_image(name: str) -> np.ndarray:
    # Located without importing insightface, whose import needs packages we do not install.
    path = Path(importlib.util.find_spec("insightface").origin).parent / "data" / "images" / name
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def template_frame(person: str) -> np.ndarray:
    """A head-and-shoulders crop of one person in t1.jpg, upscaled like a GIF template."""
    group = insightface_image("t1.jpg")
    x, y, side = T1_FACES[person]
    centre_x, centre_y, half = x + side / 2, y + side / 2, side * 1.1
    left, top = int(max(centre_x - half, 0)), int(max(centre_y - half, 0))
    crop = group[top : int(centre_y + half), left : int(centre_x + half)]
    return cv2.resize(crop, (TEMPLATE_SIDE, TEMPLATE_SIDE), interpolation=cv2.INTER_CUBIC)


def shifted(frame: np.ndarray, dx: float, dy: float) -> np.ndarray:
    warp = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (frame.shape[1], frame.shape[0])
    return cv2.warpAffine(frame, warp, size, borderMode=cv2.BORDER_REPLICATE)


def embedding_of(analyzer: FaceAnalyzer, image: np.ndarray) -> np.ndarray:
    face = analyzer.primary_face(image)
    assert face is not None, "no face to compare"
    return analyzer.identity_embedding(image, face)


@pytest.fixture(scope="module")
def engine() -> LandmarkWarpEngine:
    engine = LandmarkWarpEngine()
    engine.load()
    return engine


@pytest.fixture(scope="module")
def identity(engine) -> FaceIdentity:
    return engine.prepare_identity(data.astronaut())


def test_identity_describes_the_photos_face(identity):
    assert identity.engine == "landmark_warp"
    x, y, width, height = identity.face_box
    assert 150 < x < 200 and 60 < y < 110 and 70 < width < 110 and 70 < height < 110
    assert identity.detection_score > 0
    assert len(identity.state) < 200_000, "the identity travels with every request"


def test_prepare_identity_without_a_face_fails(engine):
    with pytest.raises(FailedPrecondition, match="No face found in the photo"):
        engine.prepare_identity(data.coffee())


@pytest.mark.parametrize("person", list(T1_FACES))
def test_swapped_face_looks_like_the_photo(engine, identity, person):
    analyzer = default_analyzer()
    photo = embedding_of(analyzer, data.astronaut())
    template = template_frame(person)
    original = embedding_of(analyzer, template)

    swapped = engine.start_stream(identity).process(template)

    assert swapped.face_found
    assert swapped.image.shape == template.shape and swapped.image.dtype == np.uint8
    result = embedding_of(analyzer, swapped.image)
    before = identity_distance(original, photo)
    after = identity_distance(result, photo)
    to_template = identity_distance(result, original)
    print(
        f"{person}: template->photo {before:.3f}, swapped->photo {after:.3f}, "
        f"swapped->template {to_template:.3f}"
    )
    assert after < before - 0.1, "the swap should move the face clearly toward the photo"
    assert after < to_template, "the swapped face should look more like the photo"


def test_swap_only_changes_the_face(engine, identity):
    template = template_frame("far_right")
    swapped = engine.start_stream(identity).process(template)

    x, y, width, height = swapped.box
    changed = np.any(swapped.image != template, axis=2)
    rows, cols = np.nonzero(changed)
    margin = max(width, height) // 2  # the feathered band and the forehead above the box
    assert rows.min() >= y - margin and rows.max() <= y + height + margin
    assert cols.min() >= x - margin and cols.max() <= x + width + margin


def test_frame_without_a_face_comes_back_unchanged(engine, identity):
    frame = data.coffee()
    original = frame.tobytes()

    swapped = engine.start_stream(identity).process(frame)

    assert not swapped.face_found
    assert swapped.box is None
    assert swapped.image.tobytes() == original
    assert frame.tobytes() == original, "the caller's frame is never written to"


def test_identity_state_round_trips_through_bytes(engine, identity):
    carried = FaceIdentity(
        engine=identity.engine,
        state=bytes(bytearray(identity.state)),
        face_box=identity.face_box,
        detection_score=identity.detection_score,
    )
    template = template_frame("centre_left")

    first = engine.start_stream(identity).process(template)
    again = LandmarkWarpEngine().start_stream(carried).process(template)

    assert np.array_equal(first.image, again.image)
    source = decode_source_face("landmark_warp", carried.state)
    assert source.landmarks.shape == (68, 2)
    assert max(source.image.shape[:2]) <= 256


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _corruptions(state: bytes) -> dict[str, bytes]:
    archive = dict(np.load(io.BytesIO(state), allow_pickle=False))
    middle = len(state) // 2
    return {
        "empty": b"",
        "truncated": state[: len(state) // 3],
        "random": np.random.default_rng(7).bytes(len(state)),
        "flipped": state[:middle]
        + bytes(b ^ 0xFF for b in state[middle : middle + 64])
        + state[middle + 64 :],
        "pickled": _npz(**{**archive, "landmarks": np.array([{"x": 1}], dtype=object)}),
        "bad_png": _npz(**{**archive, "crop_png": np.zeros(100, dtype=np.uint8)}),
        "bad_landmarks": _npz(**{**archive, "landmarks": np.zeros((5, 2), dtype=np.float32)}),
        "nan_landmarks": _npz(
            **{**archive, "landmarks": np.full((68, 2), np.nan, dtype=np.float32)}
        ),
        "missing_field": _npz(format_version=archive["format_version"]),
        "other_version": _npz(**{**archive, "format_version": np.array(99)}),
    }


@pytest.mark.parametrize(
    "corruption",
    [
        "empty",
        "truncated",
        "random",
        "flipped",
        "pickled",
        "bad_png",
        "bad_landmarks",
        "nan_landmarks",
        "missing_field",
        "other_version",
    ],
)
def test_corrupt_identity_state_is_invalid_input(engine, identity, corruption):
    broken = replace(identity, state=_corruptions(identity.state)[corruption])
    with pytest.raises(InvalidInput):
        engine.start_stream(broken)


def test_identity_from_another_engine_is_invalid_input(engine, identity):
    with pytest.raises(InvalidInput, match="landmark_warp"):
        engine.start_stream(replace(identity, engine="simswap"))


def test_swapped_face_moves_smoothly_with_the_head(engine, identity):
    template = template_frame("far_right")
    steps = range(12)
    # 1.5 px right and 0.75 px down per frame: the detector's own boxes move in jumps of
    # ~17 px (its scale pyramid), the swapped face must not.
    frames = [shifted(template, 1.5 * step, 0.75 * step) for step in steps]
    swapper = engine.start_stream(identity)

    results = [swapper.process(frame) for frame in frames]

    assert all(result.face_found for result in results)
    boxes = np.array([result.box for result in results], dtype=float)
    moves = np.diff(boxes[:, :2], axis=0)
    print("per-frame box moves (x, y):", moves.tolist())
    assert np.all(np.abs(moves[:, 0] - 1.5) <= 2.5), "horizontal motion is smooth"
    assert np.all(np.abs(moves[:, 1] - 0.75) <= 2.5), "vertical motion is smooth"
    assert np.all(np.abs(np.diff(boxes[:, 2:], axis=0)) <= 2), "the face does not pulse"
    assert boxes[-1, 0] - boxes[0, 0] == pytest.approx(16.5, abs=4)


def _still_face_landmarks(frames: int) -> list[np.ndarray]:
    """Landmarks of one still face through re-encoded, noisy copies, as a GIF's frames vary."""
    analyzer = default_analyzer()
    template = template_frame("far_right")
    rng = np.random.default_rng(3)
    landmarks = []
    for _ in range(frames):
        noisy = np.clip(template + rng.normal(0, 3, template.shape), 0, 255).astype(np.uint8)
        quality = int(rng.integers(40, 95))
        _, jpeg = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
        landmarks.append(analyzer.primary_face(cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)).landmarks)
    return landmarks


def test_smoother_calms_the_jitter_of_a_still_face():
    raw = np.array(_still_face_landmarks(30))
    smoother = LandmarkSmoother()

    smoothed = np.array([smoother.update(points) for points in raw])

    raw_jitter = raw[5:].std(axis=0).mean()
    smoothed_jitter = smoothed[5:].std(axis=0).mean()
    print(f"landmark jitter {raw_jitter:.2f} px -> {smoothed_jitter:.2f} px")
    assert raw_jitter > 0.1, "the re-encoded frames should make the landmarks jitter"
    assert smoothed_jitter < 0.7 * raw_jitter


def test_smoother_follows_a_moving_face_and_resets_on_a_cut():
    still = _still_face_landmarks(1)[0]
    smoother = LandmarkSmoother()
    for step in range(20):  # 4 px per frame, a quick head turn at 12 fps
        smoothed = smoother.update(still + np.float32([4.0 * step, 0.0]))
    lag = (still[:, 0] + 4.0 * 19 - smoothed[:, 0]).mean()
    assert 0 <= lag < 2.0, f"the face trails the head by {lag:.1f} px"

    elsewhere = still + np.float32([200.0, 50.0])  # a cut: the face is somewhere else at once
    assert np.allclose(smoother.update(elsewhere), elsewhere)


@pytest.mark.parametrize(("dx", "dy"), [(-120, 0), (110, 0), (0, -110), (0, 120), (150, 150)])
def test_faces_partly_outside_the_frame_never_break_the_stream(engine, identity, dx, dy):
    frame = shifted(template_frame("far_right"), dx, dy)
    swapped = engine.start_stream(identity).process(frame)

    assert swapped.image.shape == frame.shape and swapped.image.dtype == np.uint8
    if swapped.face_found:
        x, y, width, height = swapped.box
        assert x >= 0 and y >= 0 and x + width <= frame.shape[1] and y + height <= frame.shape[0]
    else:
        assert np.array_equal(swapped.image, frame)


@pytest.mark.parametrize("side", [1, 16, 48, 80])
def test_tiny_frames_never_break_the_stream(engine, identity, side):
    frame = cv2.resize(template_frame("far_right"), (side, side), interpolation=cv2.INTER_AREA)
    swapped = engine.start_stream(identity).process(frame)
    assert swapped.image.shape == frame.shape
    if not swapped.face_found:
        assert np.array_equal(swapped.image, frame)


def test_one_frame_swaps_in_well_under_100_ms(engine, identity):
    template = template_frame("far_right")
    swapper = engine.start_stream(identity)
    swapper.process(template)  # first call pays one-off allocations

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        swapper.process(template)
        timings.append(time.perf_counter() - started)
    median_ms = 1000 * float(np.median(timings))
    print(f"one {TEMPLATE_SIDE} px frame: {median_ms:.1f} ms (median of 5)")
    assert median_ms < 100


def _served_identity(stub, engine: str) -> faceswap_pb2.FaceIdentity:  # type: ignore[no-untyped-def]
    photo = media_pb2.EncodedImage(data=images.encode_image(data.astronaut(), "png"))
    request = faceswap_pb2.PrepareIdentityRequest(photo=photo, engine=engine)
    return stub.PrepareIdentity(request, timeout=60).identity


def _served_swap(stub, identity: faceswap_pb2.FaceIdentity, frame: np.ndarray):  # type: ignore[no-untyped-def]
    requests = [
        faceswap_pb2.SwapFacesRequest(config=faceswap_pb2.SwapConfig(identity=identity)),
        faceswap_pb2.SwapFacesRequest(
            frame=media_pb2.Frame(
                index=0, image=media_pb2.EncodedImage(data=images.encode_image(frame, "png"))
            )
        ),
    ]
    (swapped,) = stub.SwapFaces(iter(requests), timeout=60)
    return swapped


def test_each_registry_name_builds_the_engine_of_that_name():
    factories = engine_factories(FaceSwapSettings())
    names = list(factories)
    assert names.index("simswap") < names.index("landmark_warp"), "auto prefers SimSwap"
    assert {name: factory().name for name, factory in factories.items()} == {
        name: name for name in factories
    }


def test_the_server_has_landmark_warp_ready_and_simswap_waiting_for_weights(faceswap_stub):
    listing = faceswap_stub.ListFaceSwapEngines(faceswap_pb2.ListFaceSwapEnginesRequest())
    engines = {info.name: info for info in listing.engines}
    assert set(engines) == set(engine_factories(FaceSwapSettings()))
    assert engines["landmark_warp"].ready and engines["landmark_warp"].device == "cpu"
    assert not engines["simswap"].ready and engines["simswap"].detail
    assert listing.default_engine == "landmark_warp"


@pytest.mark.parametrize("name", ["landmark_warp", "auto", ""])
def test_the_server_swaps_with_landmark_warp_by_name_and_by_default(
    faceswap_stub, engine, identity, name
):
    template = template_frame("far_left")
    expected = engine.start_stream(identity).process(template)
    assert expected.face_found

    served = _served_identity(faceswap_stub, name)
    assert served.engine == "landmark_warp"
    box = served.face_box
    assert (box.x, box.y, box.width, box.height) == identity.face_box
    swapped = _served_swap(faceswap_stub, served, template)
    assert swapped.face_found and swapped.engine == "landmark_warp"
    box = swapped.face_box
    assert (box.x, box.y, box.width, box.height) == expected.box
    assert np.array_equal(images.decode_image(swapped.image.data, 10**7), expected.image)


def test_the_server_refuses_simswap_without_its_weights(faceswap_stub):
    with pytest.raises(grpc.RpcError) as caught:
        _served_identity(faceswap_stub, "simswap")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "simswap" in caught.value.details()


def test_unknown_engine_name_lists_the_known_ones(faceswap_stub):
    with pytest.raises(grpc.RpcError) as caught:
        _served_identity(faceswap_stub, "deepfake9000")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    assert "deepfake9000" in details and "landmark_warp" in details and "simswap" in details


def test_source_face_keeps_the_photo_crop_small(identity):
    source = decode_source_face("landmark_warp", identity.state)
    assert isinstance(source, SourceFace)
    height, width = source.image.shape[:2]
    assert source.landmarks[:, 0].min() >= 0 and source.landmarks[:, 0].max() <= width
    assert source.landmarks[:, 1].min() >= 0 and source.landmarks[:, 1].max() <= height
