"""API keys and tenant isolation on the public API, through the real stack."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.shared import images
from services.stack import StackInfo


def _client(info: StackInfo, api_key: str) -> RemindClient:
    return RemindClient(info.orchestrator_address, api_key)


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.fixture(scope="module")
def acme_job(stack_info: StackInfo, user_photo) -> tuple[jobs_pb2.Job, str]:
    with _client(stack_info, stack_info.api_keys["acme"]) as acme:
        photo = acme.upload(images.encode_image(user_photo, "png"), "acme.png")
        template = acme.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
        job = acme.create_gif_job(photo.name, template)
        final = list(acme.watch(job.name))[-1]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED
    return final, photo.name


@pytest.mark.parametrize("api_key", ["", "rmk_not-a-real-key"])
def test_missing_or_bad_key_is_unauthenticated(stack_info: StackInfo, api_key: str):
    with _client(stack_info, api_key) as anonymous:
        assert _code(lambda: anonymous.list_templates()) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: anonymous.list_jobs()) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: anonymous.upload(b"x", "x.png")) == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_authorization_header_is_unauthenticated(stack_info: StackInfo):
    with grpc.insecure_channel(stack_info.orchestrator_address) as channel:
        call = channel.unary_unary(
            "/remind.v1.TemplateService/ListTemplates",
            request_serializer=templates_pb2.ListTemplatesRequest.SerializeToString,
            response_deserializer=templates_pb2.ListTemplatesResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(
                templates_pb2.ListTemplatesRequest(),
                metadata=[("authorization", stack_info.api_keys["local"])],
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in caught.value.details()


def test_another_tenant_cannot_see_watch_cancel_or_download(stack_info: StackInfo, acme_job):
    job, photo = acme_job
    with _client(stack_info, stack_info.api_keys["globex"]) as globex:
        assert _code(lambda: globex.get_job(job.name)) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: list(globex.watch(job.name))) == grpc.StatusCode.NOT_FOUND
        assert (
            _code(lambda: globex.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name)))
            == grpc.StatusCode.NOT_FOUND
        )
        assert _code(lambda: globex.download(job.result.media)) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: globex.download(photo)) == grpc.StatusCode.NOT_FOUND
        assert (
            _code(
                lambda: globex.media.GetMediaUrl(
                    media_pb2.GetMediaUrlRequest(name=job.result.media)
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        assert job.name not in [listed.name for listed in globex.list_jobs()]
        templates = globex.list_templates(templates_pb2.TEMPLATE_KIND_GIF)
        assert (
            _code(lambda: globex.create_gif_job(photo, templates[0].name))
            == grpc.StatusCode.NOT_FOUND
        )
    with _client(stack_info, stack_info.api_keys["acme"]) as acme:
        assert acme.get_job(job.name).state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert len(acme.download(job.result.media)) == job.result.size_bytes


def test_health_needs_no_key(stack_info: StackInfo):
    with grpc.insecure_channel(stack_info.orchestrator_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
