"""Which face a photo gives: by default its main face (the largest, most central), on request a
named one, and a clear refusal when a photo cannot give one.

First the rules on plain boxes; then real photos, made by compositing the sample portraits
(different people from insightface's group photo), through the faceswap gRPC service; then
the public API on the local stack: DetectFaces, and GIF and video jobs that name a face.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc, media_pb2, media_service_pb2
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services import samples
from services.client import RemindClient
from services.faceswap.engines.landmark_warp import LandmarkWarpEngine
from services.faceswap.servicer import identity_from_proto
from services.shared import images, video
from services.shared.engines import Box
from services.shared.errors import FailedPrecondition, InvalidInput
from services.shared.face_choice import (
    MIN_PHOTO_FACE_SIDE,
    NO_FACE,
    FaceTracker,
    left_to_right,
    main_face,
    photo_face,
)
from services.shared.faces import FaceAnalyzer, default_analyzer, identity_distance
from tests.test_faces import insightface_image

# --- The rules, on boxes -------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    box: Box
    score: float = 1.0


def textured(height: int = 600, width: int = 800) -> np.ndarray:
    """A stand-in photo whose every region is evenly exposed."""
    return np.random.default_rng(0).integers(40, 200, (height, width, 3), dtype=np.uint8)


def test_the_main_face_is_the_large_one_not_the_best_scored_inset():
    main, inset = Face((100, 150, 309, 309), score=1.3), Face((560, 40, 109, 109), score=2.5)
    assert main_face([inset, main], (640, 700, 3)) is main


def test_of_two_faces_of_one_size_the_central_one_is_the_main_face():
    centre, corner = Face((350, 250, 100, 100)), Face((0, 0, 100, 100))
    assert main_face([corner, centre], (600, 800, 3)) is centre
    # Near a corner a face counts for little more than half its size.
    assert main_face([Face((0, 0, 150, 150)), centre], (600, 800, 3)) is centre
    assert main_face([Face((0, 0, 200, 200)), centre], (600, 800, 3)).box[2] == 200


def test_an_exact_tie_goes_to_the_higher_score():
    left, right = Face((100, 250, 100, 100), 0.5), Face((600, 250, 100, 100), 0.9)
    assert main_face([left, right], (600, 800, 3)) is right
    assert main_face([], (600, 800, 3)) is None


def test_a_face_scored_far_below_the_best_is_discounted_not_dropped():
    face, doubtful = Face((300, 80, 100, 100), 1.37), Face((350, 250, 100, 100), 0.06)
    assert photo_face([doubtful, face], textured(), None) is face
    # A subject turned away scores low beside a frontal bystander, and is still the subject.
    turned, bystander = Face((250, 150, 300, 300), 0.4), Face((640, 40, 150, 150), 2.5)
    assert photo_face([bystander, turned], textured(), None) is turned


def test_a_false_detection_on_the_astronauts_suit_is_not_taken_for_her_face():
    # Searched upsampled, dlib also finds the flag patch on her suit: as large as her face,
    # nearer the middle, scored a tenth of it.
    astronaut = data.astronaut()
    detected = FaceAnalyzer(upsample_below_side=4096).detect(astronaut)
    assert len(detected) == 2
    face = photo_face(detected, astronaut, None)
    assert face.box[1] < 100 and face.score == max(found.score for found in detected)


def test_faces_of_similar_size_and_place_are_refused_with_their_count():
    faces = [Face((60, 200, 150, 150)), Face((600, 210, 140, 140)), Face((330, 20, 30, 30))]
    with pytest.raises(FailedPrecondition, match="Found 3 faces") as refused:
        photo_face(faces, textured(), None)
    assert "face_choice" in str(refused.value) and "DetectFaces" in str(refused.value)


def test_a_clearly_larger_face_or_a_too_small_runner_up_is_no_ambiguity():
    main = Face((250, 150, 300, 300))
    assert photo_face([main, Face((640, 40, 200, 200))], textured(), None) is main
    small = Face((100, 100, 70, 70))
    assert photo_face([small, Face((600, 100, 60, 60))], textured(), None) is small


def test_an_index_names_faces_left_to_right():
    right, left, middle = Face((600, 200, 90, 90)), Face((20, 300, 90, 90)), Face((350, 50, 90, 90))
    faces = [right, left, middle]
    assert left_to_right(faces) == [left, middle, right]
    assert [photo_face(faces, textured(), index) for index in range(3)] == [left, middle, right]
    with pytest.raises(
        InvalidInput, match=r"index 3 matches no face: .* 3 face\(s\), numbered 0 to 2"
    ):
        photo_face(faces, textured(), 3)


def test_a_box_names_the_face_whose_centre_it_holds():
    left, right = Face((100, 200, 150, 150)), Face((500, 200, 150, 150))
    # A loose box around the right face, and one spanning both that overlaps the left most.
    assert photo_face([left, right], textured(), (450, 150, 300, 300)) is right
    assert photo_face([left, right], textured(), (50, 150, 520, 300)) is left
    with pytest.raises(InvalidInput, match=r"holds the centre of no face.*\(100, 200, 150, 150\)"):
        photo_face([left, right], textured(), (0, 0, 90, 90))
    with pytest.raises(InvalidInput, match="positive width and height"):
        photo_face([left, right], textured(), (100, 200, 0, 150))


def test_a_face_under_the_minimum_is_refused_naming_both_sizes():
    assert MIN_PHOTO_FACE_SIDE == 64
    with pytest.raises(FailedPrecondition, match="The face is 50 px across, under the 64 px"):
        photo_face([Face((300, 200, 50, 50))], textured(), None)
    with pytest.raises(FailedPrecondition, match="50 px across"):
        photo_face([Face((300, 200, 50, 50)), Face((500, 200, 150, 150))], textured(), 0)


def test_no_face_keeps_its_message_and_names_a_very_dark_photo():
    with pytest.raises(FailedPrecondition) as refused:
        photo_face([], textured(), None)
    assert str(refused.value) == NO_FACE
    with pytest.raises(FailedPrecondition, match=r"very dark \(brightness 3 of 255\)"):
        photo_face([], np.full((100, 100, 3), 3, np.uint8), None)


def test_a_blown_out_or_flat_face_is_refused():
    photo = textured()
    photo[200:300, 300:400] = 255
    with pytest.raises(FailedPrecondition, match="overexposed: 100% of it is pure white"):
        photo_face([Face((300, 200, 100, 100))], photo, None)
    photo[200:300, 300:400] = 9
    with pytest.raises(FailedPrecondition, match="too dark to make out"):
        photo_face([Face((300, 200, 100, 100))], photo, None)


def test_the_tracker_stays_on_one_person_as_their_sizes_cross():
    tracker = FaceTracker()
    followed = []
    for step in range(7):  # the left face shrinks from 150 to 120 px, the right one grows
        left, right = (
            Face((100, 200, 150 - 5 * step, 150 - 5 * step)),
            Face((500, 200, 120 + 5 * step, 120 + 5 * step)),
        )
        face, _ = tracker.follow([right, left], (600, 800, 3))
        followed.append(face is left)
    assert all(followed)


def test_the_tracker_keeps_its_place_through_a_missed_frame_and_restarts_on_a_cut():
    tracker = FaceTracker()
    left, right = Face((100, 200, 150, 150)), Face((500, 200, 120, 120))
    assert tracker.follow([left, right], (600, 800, 3)) == (left, False)
    assert tracker.follow([], (600, 800, 3)) == (None, False)
    moved = Face((130, 210, 150, 150))
    assert tracker.follow([right, moved], (600, 800, 3)) == (moved, True)
    # A cut: nobody where the followed face was; the new frame's main face takes over.
    elsewhere = [Face((600, 50, 100, 100)), Face((350, 300, 160, 160))]
    assert tracker.follow(elsewhere, (600, 800, 3)) == (elsewhere[1], False)


# --- Real photos through the faceswap service ----------------------------------------------


def portrait(person: int, side: int) -> np.ndarray:
    """Sample person `person`, with the face 45% of a `side` px square."""
    photo = samples.sample_face_photo(person)
    interpolation = cv2.INTER_AREA if side < photo.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(photo, (side, side), interpolation=interpolation)


def inset_photo() -> np.ndarray:
    """Person 1's portrait (a 309 px face) with person 0's as a small inset (a 105 px face)."""
    photo = portrait(1, 765).copy()
    photo[16:256, 509:749] = portrait(0, 240)
    return photo


def pair_photo() -> np.ndarray:
    """Persons 0 and 2 side by side, their faces of one size."""
    return np.concatenate([portrait(0, 400), portrait(2, 400)], axis=1)


def bystander_photo() -> np.ndarray:
    """Person 1 in the middle; person 2 smaller, to the side, looking into the camera."""
    photo = np.full((600, 900, 3), 120, np.uint8)
    photo[:, 150:750] = portrait(1, 600)
    photo[300:600, 600:900] = portrait(2, 300)
    return photo


def tiny_face_photo() -> np.ndarray:
    """Person 0's face, 53 px across, in a 640 x 480 photo."""
    photo = np.full((480, 640, 3), 128, np.uint8)
    photo[180:300, 260:380] = portrait(0, 120)
    return photo


def png(photo: np.ndarray) -> media_pb2.EncodedImage:
    return media_pb2.EncodedImage(data=images.encode_image(photo, "png"))


def embeddings(photo: np.ndarray) -> list[np.ndarray]:
    """The dlib identity of each face of a photo, left to right."""
    analyzer = default_analyzer()
    faces = left_to_right(analyzer.detect(photo))
    return [analyzer.identity_embedding(photo, face) for face in faces]


def main_identity(image: np.ndarray) -> np.ndarray | None:
    analyzer = default_analyzer()
    face = analyzer.primary_face(image)
    return None if face is None else analyzer.identity_embedding(image, face)


def looks_like(image: np.ndarray, person: np.ndarray, other: np.ndarray) -> bool:
    """The main face of `image` is closer to `person` than to `other`."""
    swapped = main_identity(image)
    assert swapped is not None, "no face in the swapped image"
    return identity_distance(swapped, person) < identity_distance(swapped, other)


@pytest.fixture(scope="module")
def swap_engine() -> LandmarkWarpEngine:
    engine = LandmarkWarpEngine()
    engine.load()
    return engine


def prepare(
    stub: faceswap_pb2_grpc.FaceSwapServiceStub,
    photo: np.ndarray,
    choice: media_pb2.FaceChoice | None = None,
) -> faceswap_pb2.FaceIdentity:
    request = faceswap_pb2.PrepareIdentityRequest(photo=png(photo), face_choice=choice)
    return stub.PrepareIdentity(request, timeout=60).identity


def refusal(
    stub: faceswap_pb2_grpc.FaceSwapServiceStub,
    photo: np.ndarray,
    choice: media_pb2.FaceChoice | None = None,
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        prepare(stub, photo, choice)
    return refused.value


def swapped_astronaut(
    engine: LandmarkWarpEngine, identity: faceswap_pb2.FaceIdentity
) -> np.ndarray:
    """The astronaut photo with the identity's face swapped in."""
    result = engine.start_stream(identity_from_proto(identity)).process(data.astronaut())
    assert result.face_found
    return result.image


def test_find_faces_lists_a_photos_faces_left_to_right(faceswap_stub):
    response = faceswap_stub.FindFaces(faceswap_pb2.FindFacesRequest(photo=png(pair_photo())))
    assert response.engine == "landmark_warp"
    assert [face.index for face in response.faces] == [0, 1]
    left, right = response.faces
    assert left.box.x + left.box.width < 400 < right.box.x
    assert abs(left.box.width - right.box.width) < 10 and left.score > 0 and right.score > 0


def test_the_main_face_is_used_not_a_better_scored_inset(faceswap_stub, swap_engine):
    photo = inset_photo()
    main, inset = sorted(default_analyzer().detect(photo), key=lambda face: -face.box[2])
    assert inset.score > main.score, "the inset is what a detector-score choice would take"
    assert main.box[2] > 300 and inset.box[2] < 110

    identity = prepare(faceswap_stub, photo)
    assert (
        abs(identity.face_box.x - main.box[0]) < 5
        and abs(identity.face_box.width - main.box[2]) < 5
    )
    inset_face, main_face_ = (
        default_analyzer().identity_embedding(photo, face) for face in (inset, main)
    )
    assert looks_like(swapped_astronaut(swap_engine, identity), main_face_, inset_face)


def test_the_main_face_is_used_not_a_bystander(faceswap_stub, swap_engine):
    photo = bystander_photo()
    main, bystander = embeddings(photo)  # left to right: the bystander is on the right
    identity = prepare(faceswap_stub, photo)
    assert identity.face_box.x < 450 < identity.face_box.x + identity.face_box.width
    assert looks_like(swapped_astronaut(swap_engine, identity), main, bystander)


def test_two_faces_of_one_size_are_refused_until_one_is_named(faceswap_stub, swap_engine):
    photo = pair_photo()
    refused = refusal(faceswap_stub, photo)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Found 2 faces" in refused.details() and "face_choice" in refused.details()

    left, right = embeddings(photo)
    by_index = [
        prepare(faceswap_stub, photo, media_pb2.FaceChoice(index=index)) for index in (0, 1)
    ]
    assert by_index[0].face_box.x < 400 <= by_index[1].face_box.x
    assert by_index[0].state != by_index[1].state
    assert looks_like(swapped_astronaut(swap_engine, by_index[0]), left, right)
    assert looks_like(swapped_astronaut(swap_engine, by_index[1]), right, left)

    loose_box = media_pb2.Box(x=420, y=40, width=360, height=320)  # around the right face
    by_box = prepare(faceswap_stub, photo, media_pb2.FaceChoice(box=loose_box))
    assert by_box.face_box == by_index[1].face_box


def test_a_choice_matching_no_face_is_invalid_argument(faceswap_stub):
    photo = pair_photo()
    refused = refusal(faceswap_stub, photo, media_pb2.FaceChoice(index=2))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "index 2 matches no face" in refused.details() and "numbered 0 to 1" in refused.details()
    empty_corner = media_pb2.Box(x=0, y=330, width=60, height=60)
    refused = refusal(faceswap_stub, photo, media_pb2.FaceChoice(box=empty_corner))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds the centre of no face" in refused.details()


def test_a_tiny_face_is_refused_naming_the_minimum_and_its_size(faceswap_stub):
    refused = refusal(faceswap_stub, tiny_face_photo())
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = default_analyzer().detect(tiny_face_photo())[0].box[2]
    assert found < 64
    assert f"The face is {found} px across, under the 64 px minimum" in refused.details()


def test_a_greyscale_photo_gives_the_persons_identity(faceswap_stub, swap_engine):
    grey = cv2.cvtColor(samples.sample_face_photo(0), cv2.COLOR_RGB2GRAY)
    ok, encoded = cv2.imencode(".png", grey)  # a one-channel PNG, as a greyscale file is
    assert ok
    request = faceswap_pb2.PrepareIdentityRequest(
        photo=media_pb2.EncodedImage(data=encoded.tobytes())
    )
    identity = faceswap_stub.PrepareIdentity(request, timeout=60).identity
    person, template = embeddings(samples.sample_face_photo(0)) + embeddings(data.astronaut())
    assert looks_like(swapped_astronaut(swap_engine, identity), person, template)


@pytest.mark.parametrize(
    "exposed",
    [
        lambda photo: (photo * 0.2).astype(np.uint8),  # face luma ~29 of 255, spread ~9
        lambda photo: (photo * 0.2 + 255 * 0.8).astype(np.uint8),  # washed out, spread ~9
    ],
    ids=["dark", "washed-out"],
)
def test_a_dim_or_washed_out_photo_still_carries_the_person(faceswap_stub, swap_engine, exposed):
    photo = samples.sample_face_photo(0)
    person, template = embeddings(photo) + embeddings(data.astronaut())
    identity = prepare(faceswap_stub, exposed(photo.astype(np.float32)))
    assert looks_like(swapped_astronaut(swap_engine, identity), person, template)


def test_photos_beyond_rescue_get_a_reason(faceswap_stub):
    photo = samples.sample_face_photo(0).astype(np.float32)
    blown_out = np.clip(photo * 2.5, 0, 255).astype(np.uint8)
    refused = refusal(faceswap_stub, blown_out)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "The face is overexposed" in refused.details()
    refused = refusal(faceswap_stub, np.full((400, 400, 3), 4, np.uint8))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "No face found in the photo, which is very dark" in refused.details()


def test_a_turned_face_is_used_and_a_sideways_photo_says_no_face(faceswap_stub):
    # The group photo's woman at the back, her head turned and tilted toward the table.
    turned = insightface_image("t1.jpg")[100:450, 220:520]
    identity = prepare(faceswap_stub, turned)
    assert 30 < identity.face_box.x < 60 and 90 < identity.face_box.width < 120
    sideways = np.ascontiguousarray(np.rot90(samples.sample_face_photo(0)))
    refused = refusal(faceswap_stub, sideways)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == NO_FACE


def test_template_frames_keep_one_person_as_the_sizes_cross(swap_engine):
    identity = swap_engine.prepare_identity(samples.sample_face_photo(1))
    stream = swap_engine.start_stream(identity)
    sides = []
    for step in range(7):  # the left person shrinks from 300 to 240 px, the right one grows
        frame = np.full((320, 640, 3), 120, np.uint8)
        for centre_x, person, side in ((160, 0, 300 - 10 * step), (480, 2, 240 + 10 * step)):
            left, top = centre_x - side // 2, 160 - side // 2
            frame[top : top + side, left : left + side] = portrait(person, side)
        result = stream.process(frame)
        assert result.face_found and result.box is not None
        sides.append("left" if result.box[0] + result.box[2] / 2 < 320 else "right")
    assert sides == ["left"] * 7


# --- The public API on the local stack -----------------------------------------------------


@pytest.fixture
def uploaded_pair(client: RemindClient) -> media_service_pb2.Media:
    return client.upload(images.encode_image(pair_photo(), "png"), "pair.png")


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value


def test_detect_faces_lists_an_uploaded_photos_faces(client: RemindClient, uploaded_pair):
    faces = client.detect_faces(uploaded_pair.name)
    assert [face.index for face in faces] == [0, 1]
    assert faces[0].box.x < 400 <= faces[1].box.x
    other = client.upload(images.encode_image(samples.sample_face_photo(3), "png"), "one.png")
    assert len(client.detect_faces(other.name)) == 1


def test_a_gif_job_for_two_faces_asks_which_and_refuses_a_face_that_is_not_there(
    client: RemindClient, uploaded_pair
):
    template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    refused = rpc_error(lambda: client.create_gif_job(uploaded_pair.name, template))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Found 2 faces" in refused.details() and "face_choice" in refused.details()
    refused = rpc_error(
        lambda: client.create_gif_job(
            uploaded_pair.name, template, face_choice=media_pb2.FaceChoice(index=5)
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_gif_jobs_swap_in_the_face_named_by_index_or_by_box(
    client: RemindClient, uploaded_pair, tmp_path: Path
):
    template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
    right_box = client.detect_faces(uploaded_pair.name)[1].box
    choices = [media_pb2.FaceChoice(index=0), media_pb2.FaceChoice(box=right_box)]
    created = [
        client.create_gif_job(uploaded_pair.name, template, face_choice=choice)
        for choice in choices
    ]
    people = embeddings(pair_photo())
    for named, job in enumerate(created):
        final = list(client.watch(job.name))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        result = tmp_path / f"{named}.gif"
        result.write_bytes(client.download(final.result.media))
        swapped = [main_identity(frame) for frame in list(video.iter_frames(result))[::6]]
        person, other = people[named], people[1 - named]
        alike = [
            identity_distance(face, person) < identity_distance(face, other)
            for face in swapped
            if face is not None
        ]
        assert len(alike) >= 5 and all(alike), f"face {named}: {alike}"


def test_a_video_job_takes_the_face_choice_at_admission(client: RemindClient, uploaded_pair):
    recording = samples.wav_bytes(samples.make_mix("en-us", 4.0).mixture)
    voice = client.upload(recording, "voice.wav")

    def create(choice: media_pb2.FaceChoice | None) -> jobs_pb2.Job:
        return client.create_video_job(
            uploaded_pair.name, voice.name, "templates/astronaut-talk", face_choice=choice
        )

    refused = rpc_error(lambda: create(None))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Found 2 faces" in refused.details()
    job = create(media_pb2.FaceChoice(index=1))
    assert job.state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
    client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
