"""A GIF job through the real stack with the SimSwap engine on random weights.

The models directory holds random weights in the official formats (ArcFace as the published
pickled module, the 224 generator as its state_dict) and no SCRFD file, so dlib's landmarks
stand in for the detector; SCRFD decoding is tested on its own against insightface's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc, media_pb2
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.orchestrator.model_clients import FaceSwapClient
from services.shared import images, video
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.stack import LocalStack, StackInfo
from tests.conftest import free_base_port
from tests.test_simswap_reference import build_models_dir

TEMPLATES_BUCKET = "remind-templates"
FRAMES_CHECKED = 3


@pytest.fixture(scope="module")
def simswap_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    models_dir = build_models_dir(tmp_path_factory.mktemp("models"))
    stack = LocalStack(
        tmp_path_factory.mktemp("simswap-stack"),
        free_base_port(),
        extra_env={"REMIND_FACESWAP_MODELS_DIR": str(models_dir)},
    )
    info = stack.start()
    yield info
    stack.stop()


@pytest.fixture(scope="module")
def template_gif(
    simswap_stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
) -> tuple[templates_pb2.Template, Path]:
    address, key = simswap_stack.orchestrator_address, simswap_stack.api_keys["local"]
    with RemindClient(address, key) as client:
        template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0]
    store = ObjectStore(
        S3Settings(
            endpoint=simswap_stack.s3_endpoint,
            access_key=simswap_stack.access_key,
            secret_key=simswap_stack.secret_key,
        )
    )
    path = tmp_path_factory.mktemp("template") / "template.gif"
    store.download(TEMPLATES_BUCKET, f"builtin/{template.name.split('/')[1]}.gif", path)
    return template, path


def test_service_lists_simswap_ready_and_prefers_it(simswap_stack):
    with grpc.insecure_channel(simswap_stack.faceswap_address) as channel:
        stub = faceswap_pb2_grpc.FaceSwapServiceStub(channel)
        listed = stub.ListFaceSwapEngines(faceswap_pb2.ListFaceSwapEnginesRequest(), timeout=10)
    ready = {engine.name: engine.ready for engine in listed.engines}
    assert ready["simswap"] and ready["landmark_warp"]
    assert listed.default_engine == "simswap"


def test_gif_job_with_simswap_succeeds(simswap_stack, template_gif, user_photo, tmp_path):
    template, _ = template_gif
    address, key = simswap_stack.orchestrator_address, simswap_stack.api_keys["local"]
    with RemindClient(address, key) as client:
        photo = client.upload(images.encode_image(user_photo, "png"), "me.png")
        job = client.create_gif_job(photo.name, template.name, engine="simswap")
        final = list(client.watch(job.name))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        assert final.result.engines["faceswap"] == "simswap"
        result = tmp_path / "result.gif"
        result.write_bytes(client.download(final.result.media))
    frames = list(video.iter_frames(result))
    assert len(frames) == template.frame_count == final.result.frames_total
    assert all(frame.shape == (template.height, template.width, 3) for frame in frames)
    assert final.result.frames_with_face >= 0.9 * final.result.frames_total


def test_paste_back_changes_pixels_only_around_the_face(simswap_stack, template_gif, user_photo):
    _, path = template_gif
    originals = list(video.iter_frames(path))[:FRAMES_CHECKED]
    client = FaceSwapClient(simswap_stack.faceswap_address, 8 << 20, 120)
    try:
        identity = client.prepare_identity(images.encode_image(user_photo, "png"), "simswap")
        assert identity.engine == "simswap"
        frames = (
            media_pb2.Frame(
                index=index,
                image=media_pb2.EncodedImage(
                    data=images.encode_image(frame, "png"), format=media_pb2.IMAGE_FORMAT_PNG
                ),
            )
            for index, frame in enumerate(originals)
        )
        responses = list(client.swap_faces(identity, frames))
    finally:
        client.close()
    assert [response.index for response in responses] == list(range(len(originals)))
    for original, response in zip(originals, responses, strict=True):
        assert response.engine == "simswap" and response.face_found
        swapped = images.decode_image(response.image.data, 10**8)
        assert swapped.shape == original.shape
        changed = np.abs(swapped.astype(int) - original.astype(int)).max(axis=2) > 0
        ys, xs = np.nonzero(changed)
        assert len(ys) > 500, "the face was replaced"
        box = response.face_box
        # The official crop spans about twice the detected face; the mask stays inside it.
        margin_x, margin_y = box.width, box.height
        assert box.x - margin_x <= xs.min() and xs.max() <= box.x + box.width + margin_x
        assert box.y - margin_y <= ys.min() and ys.max() <= box.y + box.height + margin_y
        outside = changed.copy()
        outside[
            max(0, box.y - margin_y) : box.y + box.height + margin_y,
            max(0, box.x - margin_x) : box.x + box.width + margin_x,
        ] = False
        assert not outside.any()
