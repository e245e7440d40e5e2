"""One shared fixture for integration tests: the real local stack on free loopback ports."""

import random
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from remind.v1 import faceswap_pb2_grpc
from skimage import data

from services.client import RemindClient
from services.faceswap import server as faceswap_server
from services.faceswap.config import FaceSwapSettings
from services.samples import sample_face_photo
from services.shared import images
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.stack import LocalStack, StackInfo, ports_free


def free_base_port() -> int:
    for _ in range(50):
        base = random.randrange(20000, 30000, 40)
        if ports_free(base):
            return base
    raise RuntimeError("no free port range for the test stack")


# "local" is every test's own tenant; the others prove tenants cannot reach each other.
TENANTS = ("local", "acme", "globex")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(
        tmp_path_factory.mktemp("stack"),
        free_base_port(),
        # A service killed by a fault test is back within seconds; a dead one fails a job fast;
        # a job whose orchestrator was killed runs again within seconds.
        extra_env={
            "REMIND_ORCHESTRATOR_STREAM_RETRY_SECONDS": "20",
            "REMIND_ORCHESTRATOR_JOB_LEASE_SECONDS": "6",
        },
        tenants=TENANTS,
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def stack_info(stack: LocalStack) -> StackInfo:
    info = stack.info()
    assert info is not None
    return info


@pytest.fixture
def client(stack: LocalStack, stack_info: StackInfo) -> Iterator[RemindClient]:
    stack.start()  # brings back anything a previous test stopped on purpose
    with RemindClient(stack_info.orchestrator_address, stack_info.api_keys["local"]) as remind:
        yield remind


@pytest.fixture(scope="session")
def store(stack_info: StackInfo) -> ObjectStore:
    return ObjectStore(
        S3Settings(
            endpoint=stack_info.s3_endpoint,
            access_key=stack_info.access_key,
            secret_key=stack_info.secret_key,
        )
    )


@pytest.fixture(scope="module")
def faceswap_stub(tmp_path_factory) -> Iterator[faceswap_pb2_grpc.FaceSwapServiceStub]:
    """The faceswap server as `python -m services.faceswap.server` starts it (the registry's
    engine_factories through start_model_server), on a free loopback port, with an empty models
    folder: SimSwap cannot load there, so the embedded engine must serve."""
    models = tmp_path_factory.mktemp("no-models")
    running = faceswap_server.start(FaceSwapSettings(port=0, models_dir=str(models)))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield faceswap_pb2_grpc.FaceSwapServiceStub(channel)
    finally:
        running.stop()


@pytest.fixture(scope="session")
def astronaut_png() -> bytes:
    return images.encode_image(data.astronaut(), "png")


@pytest.fixture(scope="session")
def user_photo() -> np.ndarray:
    """Someone other than the astronaut the built-in templates show."""
    return sample_face_photo(0)
