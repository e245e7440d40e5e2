"""Errors stay small and clean: long names are cut short in messages (directly and through
the gRPC-web edge), and no storage key, scope or memory address reaches a caller."""

import http.client
import urllib.parse

import grpc
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.shared.grpc_status import MAX_MESSAGE_CHARS, public_message
from services.stack import StackInfo

LONG = "x" * 20_000


def _details(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


CALLS = {
    "get-job": lambda c: c.jobs.GetJob(jobs_pb2.GetJobRequest(name="jobs/" + LONG)),
    "get-template": lambda c: c.templates.GetTemplate(
        templates_pb2.GetTemplateRequest(name="templates/" + LONG)
    ),
    "get-media": lambda c: c.media.GetMedia(media_pb2.GetMediaRequest(name="media/" + LONG)),
    "append-upload": lambda c: c.media.AppendUpload(
        media_pb2.AppendUploadRequest(upload="uploads/" + LONG, offset=0, data=b"x")
    ),
    "gif-job-engine": lambda c: c.jobs.CreateGifJob(
        jobs_pb2.CreateGifJobRequest(
            face_media="media/" + "0" * 32, template="templates/" + LONG, faceswap_engine=LONG
        )
    ),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_long_name_is_cut_short_in_the_message(client: RemindClient, call):  # type: ignore[no-untyped-def]
    code, details = _details(lambda: call(client))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert len(details) < 300 and "cut from" in details, details


def test_a_long_name_through_the_edge_is_a_clean_status_not_a_proxy_error(
    stack_info: StackInfo,
):
    request = jobs_pb2.GetJobRequest(name="jobs/" + LONG).SerializeToString()
    edge = urllib.parse.urlsplit(stack_info.edge_url)
    connection = http.client.HTTPConnection(edge.hostname, edge.port, timeout=30)
    connection.request(
        "POST",
        "/remind.v1.JobService/GetJob",
        body=b"\x00" + len(request).to_bytes(4, "big") + request,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "x-api-key": stack_info.api_keys["local"],
        },
    )
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200, (response.status, body[:200])
    status = response.getheader("grpc-status") or ""
    message = response.getheader("grpc-message") or ""
    if not status:  # not trailers-only: the trailers come as the body's last frame
        trailers = body[5:].decode(errors="replace")
        status = trailers.split("grpc-status:")[1].split("\r\n")[0].strip()
        message = trailers.split("grpc-message:")[1].split("\r\n")[0].strip()
    assert status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert len(urllib.parse.unquote(message)) < 300


def test_no_storage_key_or_scope_reaches_a_caller(client: RemindClient, stack_info: StackInfo):
    gone = "media/" + "0" * 32
    messages = [
        _details(lambda: client.media.GetMedia(media_pb2.GetMediaRequest(name=gone)))[1],
        _details(lambda: client.media.DeleteMedia(media_pb2.DeleteMediaRequest(name=gone)))[1],
        _details(lambda: client.jobs.GetJob(jobs_pb2.GetJobRequest(name="jobs/" + "1" * 32)))[1],
    ]
    for message in messages:
        assert "local/" not in message and ".json" not in message and "remind-" not in message
    page = client.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1))
    if page.next_page_token:
        token = page.next_page_token
        assert "/" not in token and "local" not in token and ".json" not in token


def test_public_message_drops_addresses_and_caps_the_length():
    ffmpeg = "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d4c1a2b3c0] moov atom not found"
    assert public_message(ffmpeg) == "[mov,mp4,m4a,3gp,3g2,mj2] moov atom not found"
    assert len(public_message("y" * 50_000)) == MAX_MESSAGE_CHARS
