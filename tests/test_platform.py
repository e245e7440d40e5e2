"""What every server promises: health, reflection, metrics, clear statuses; and the store's keys."""

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from minio import Minio
from minio.error import S3Error
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc, media_pb2
from remind.v1 import job_service_pb2 as jobs_pb2
from skimage import data

from services.shared import images
from services.stack import StackInfo

REPO = Path(__file__).resolve().parent.parent
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def _grpcurl(*args: str) -> str:
    done = subprocess.run(
        [GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _bearer(stack_info: StackInfo) -> list[str]:
    return ["-H", f"x-api-key: {stack_info.api_keys['local']}"]


# What each server serves, by the full names its health and reflection services report.
SERVED = {
    "orchestrator": (
        "remind.v1.AccountService",
        "remind.v1.JobService",
        "remind.v1.TemplateService",
        "remind.v1.MediaService",
    ),
    "faceswap": ("remind.v1.FaceSwapService",),
    "lipsync": ("remind.v1.LipSyncService",),
    "voice": ("remind.v1.VoiceService",),
}
PLATFORM_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return reply.status


@pytest.mark.parametrize("server", list(SERVED))
def test_health_is_serving_overall_and_for_each_service(stack_info: StackInfo, server: str):
    address = getattr(stack_info, f"{server}_address")
    for service in ("", *SERVED[server]):
        assert _health(address, service) == health_pb2.HealthCheckResponse.SERVING, (
            f"{server}: {service or 'overall'}"
        )
    # A name the server does not serve is unknown to it, not reported as serving.
    with pytest.raises(grpc.RpcError) as caught:
        _health(address, "remind.v1.NoSuchService")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("server", list(SERVED))
def test_reflection_lists_exactly_the_services_of_each_server(stack_info: StackInfo, server: str):
    address = getattr(stack_info, f"{server}_address")
    with grpc.insecure_channel(address) as channel:
        replies = list(
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
    (reply,) = replies
    listed = [service.name for service in reply.list_services_response.service]
    assert sorted(listed) == sorted([*SERVED[server], *PLATFORM_SERVICES])


def test_grpcurl_lists_and_describes_through_reflection(stack_info: StackInfo):
    services = _grpcurl(stack_info.orchestrator_address, "list").split()
    assert {
        "remind.v1.JobService",
        "remind.v1.TemplateService",
        "remind.v1.MediaService",
        "grpc.health.v1.Health",
    } <= set(services)
    described = _grpcurl(stack_info.orchestrator_address, "describe", "remind.v1.JobService")
    assert "rpc WatchJob" in described
    templates = json.loads(
        _grpcurl(
            *_bearer(stack_info),
            "-d",
            "{}",
            stack_info.orchestrator_address,
            "remind.v1.TemplateService/ListTemplates",
        )
    )
    assert len(templates["templates"]) >= 3
    assert "remind.v1.FaceSwapService" in _grpcurl(stack_info.faceswap_address, "list")


def test_metrics_endpoints_count_rpcs(stack_info: StackInfo):
    _grpcurl(
        *_bearer(stack_info),
        "-d",
        "{}",
        stack_info.orchestrator_address,
        "remind.v1.TemplateService/ListTemplates",
    )
    for service in ("orchestrator", "faceswap"):
        text = urllib.request.urlopen(stack_info.metrics_url(service), timeout=10).read().decode()
        assert "remind_rpcs_total" in text
    orchestrator = urllib.request.urlopen(stack_info.metrics_url("orchestrator")).read().decode()
    assert 'method="ListTemplates"' in orchestrator
    assert "remind_jobs_running" in orchestrator and "remind_jobs_waiting" in orchestrator
    faceswap = urllib.request.urlopen(stack_info.metrics_url("faceswap")).read().decode()
    assert 'remind_engine_ready{device="cpu",engine="landmark_warp"} 1.0' in faceswap


def test_job_stages_are_timed_in_metrics(stack_info: StackInfo, client, user_photo):
    face = client.upload(images.encode_image(user_photo, "png"), "me.png")
    job = client.create_gif_job(face.name, client.list_templates(1)[0].name)
    assert list(client.watch(job.name))[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    text = urllib.request.urlopen(stack_info.metrics_url("orchestrator")).read().decode()
    for stage in ("preparing", "swapping_faces", "storing"):
        assert f'remind_job_stage_seconds_count{{kind="gif",stage="{stage}"}}' in text


def _swap_stream(stack_info: StackInfo, requests: list) -> list:
    with grpc.insecure_channel(stack_info.faceswap_address) as channel:
        stub = faceswap_pb2_grpc.FaceSwapServiceStub(channel)
        return list(stub.SwapFaces(iter(requests), timeout=60))


def test_swap_stream_without_config_is_invalid_argument(stack_info: StackInfo):
    frame = faceswap_pb2.SwapFacesRequest(
        frame=media_pb2.Frame(
            index=0, image=media_pb2.EncodedImage(data=images.encode_image(data.coffee(), "png"))
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        _swap_stream(stack_info, [frame])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in caught.value.details()


def test_frames_without_a_face_pass_through_unchanged(stack_info: StackInfo):
    with grpc.insecure_channel(stack_info.faceswap_address) as channel:
        stub = faceswap_pb2_grpc.FaceSwapServiceStub(channel)
        identity = stub.PrepareIdentity(
            faceswap_pb2.PrepareIdentityRequest(
                photo=media_pb2.EncodedImage(data=images.encode_image(data.astronaut(), "png"))
            )
        ).identity
    assert identity.engine == "landmark_warp"
    coffee = data.coffee()
    requests = [faceswap_pb2.SwapFacesRequest(config=faceswap_pb2.SwapConfig(identity=identity))]
    requests += [
        faceswap_pb2.SwapFacesRequest(
            frame=media_pb2.Frame(
                index=i, image=media_pb2.EncodedImage(data=images.encode_image(coffee, "png"))
            )
        )
        for i in range(3)
    ]
    responses = _swap_stream(stack_info, requests)
    assert [r.index for r in responses] == [0, 1, 2]
    for response in responses:
        assert not response.face_found
        assert (images.decode_image(response.image.data, 10**7) == coffee).all()


def test_the_store_rejects_wrong_keys_and_anonymous_reads(stack_info: StackInfo):
    wrong = Minio(
        stack_info.s3_endpoint,
        access_key=stack_info.access_key,
        secret_key="not-the-secret",
        secure=False,
    )
    with pytest.raises(S3Error):
        wrong.list_buckets()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{stack_info.s3_endpoint}/remind-results/", timeout=10)
    assert caught.value.code == 403


def test_protos_pass_buf_lint():
    buf = REPO / ".tools" / "node_modules" / ".bin" / "buf"
    assert buf.exists() or shutil.which("buf"), "make setup installs buf from npm"
    done = subprocess.run(
        [str(buf) if buf.exists() else "buf", "lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
