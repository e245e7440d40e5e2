"""No call can starve the others, on a stack of its own with small, known stream caps.

With over a thousand idle streams open on the orchestrator (job watches, health watches and
trickling uploads of three tenants from many addresses, and callers without credentials
knocking), unary calls and health checks still answer at once and every stream beyond a cap
is refused with RESOURCE_EXHAUSTED; a model service holds a thousand idle frame streams the
same way; a flood of gRPC-web streams through the edge holds only its address's places; and a
stalled upload is ended by the idle timeout, which frees its place.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import job_service_pb2_grpc as jobs_grpc
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import media_service_pb2_grpc as media_grpc
from remind.v1 import template_service_pb2 as templates_pb2
from remind.v1 import template_service_pb2_grpc as templates_grpc

from services.client import RemindClient
from services.orchestrator.server import TEMPLATE_SERVICE
from services.shared import images
from services.shared.admission import peer_host, trusted_networks
from services.shared.errors import Misconfigured
from services.shared.server import start_server
from services.shared.settings import ServerSettings
from services.stack import LocalStack, pid_alive
from tests.conftest import TENANTS, free_base_port

MAX_STREAMS, PER_TENANT, PER_ADDRESS = 1100, 330, 40
IDLE_TIMEOUT = 4.0
FACESWAP_STREAMS = 1000
# Per tenant: watches and uploads up to the tenant's cap; health watches have no tenant.
WATCHES_PER_TENANT, UPLOADS_PER_TENANT, HEALTH_WATCHES = 300, 30, 100
# What "at once" means for a unary call on this shared 2-core machine.
ANSWER_SECONDS = 2.0
# Uploads send a byte this often: slow, but never idle long enough to be ended.
TRICKLE_SECONDS = 1.0
OPENING_AT_ONCE = 50


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.7:5443", "10.0.0.7"),
        ("ipv6:[::1]:5443", "::1"),
        ("ipv6:%5B2001:db8::2%5D:5443", "2001:db8::2"),
        ("unix:/run/remind.sock", "unix:/run/remind.sock"),
    ],
)
def test_the_caller_address_is_the_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert trusted_networks(" 127.0.0.1, 10.0.0.0/8 ,") == [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]
    with pytest.raises(Misconfigured, match="trusted proxies"):
        trusted_networks("envoy")


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(
        tmp_path_factory.mktemp("crowd-stack"),
        free_base_port(),
        extra_env={
            "REMIND_ORCHESTRATOR_MAX_STREAMS": str(MAX_STREAMS),
            "REMIND_ORCHESTRATOR_MAX_STREAMS_PER_TENANT": str(PER_TENANT),
            "REMIND_ORCHESTRATOR_MAX_STREAMS_PER_ADDRESS": str(PER_ADDRESS),
            "REMIND_ORCHESTRATOR_REQUEST_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT),
            # One job at a time, so that jobs wait in the queue behind the first.
            "REMIND_ORCHESTRATOR_JOB_WORKERS": "1",
            "REMIND_FACESWAP_MAX_STREAMS": str(FACESWAP_STREAMS),
            "REMIND_FACESWAP_MAX_STREAMS_PER_ADDRESS": str(FACESWAP_STREAMS),
            "REMIND_FACESWAP_REQUEST_IDLE_TIMEOUT_SECONDS": "600",
        },
        tenants=TENANTS,
    )
    stack.start()
    yield stack
    info = stack.info()
    if info and "faceswap" in info.pids and pid_alive(info.pids["faceswap"]):
        os.kill(info.pids["faceswap"], signal.SIGCONT)  # frozen by live_jobs
    stack.stop()


@pytest.fixture(scope="module")
def live_jobs(crowd: LocalStack, user_photo) -> dict[str, str]:
    """An unfinished job of each tenant, by tenant: they wait behind a first job, and the
    faceswap service is frozen (SIGSTOP, until the module ends) before any of them can run.
    Tests of the faceswap service itself come before the first test that uses this."""
    info = crowd.info()
    assert info is not None
    photo = images.encode_image(user_photo, "png")
    jobs = {}
    # "local" twice: its first job is the one the others wait behind.
    for tenant in ("local", *TENANTS):
        with RemindClient(info.orchestrator_address, info.api_keys[tenant]) as client:
            face = client.upload(photo, "me.png")
            template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
            jobs[tenant] = client.create_gif_job(face.name, template).name
    os.kill(info.pids["faceswap"], signal.SIGSTOP)
    for tenant, name in jobs.items():
        with RemindClient(info.orchestrator_address, info.api_keys[tenant]) as client:
            state = client.get_job(name).state
        assert state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING), (
            f"{tenant}'s job ended before the faceswap service froze"
        )
    return jobs


def _process_figures(pid: int) -> tuple[int, int]:
    """Threads and resident memory (bytes) of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) * 1024


def _retry_delay(trailing: grpc.aio.Metadata | None) -> float | None:
    """The RetryInfo delay of a refused call's status details, if it has one."""
    for key, value in trailing or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(retry):
                    return retry.retry_delay.ToTimedelta().total_seconds()
    return None


def _who(api_key: str, address: str) -> list[tuple[str, str]]:
    """Metadata of a caller: its key, and the address the (loopback, trusted) edge would
    forward."""
    metadata = [("x-forwarded-for", address)]
    return [("x-api-key", api_key), *metadata] if api_key else metadata


@asynccontextmanager
async def _channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        yield channel


async def _refusal(call: grpc.aio.Call) -> tuple[grpc.StatusCode, str, float | None]:
    """The status of a call that must end at once."""
    code = await asyncio.wait_for(call.code(), timeout=10)
    return code, await call.details(), _retry_delay(await call.trailing_metadata())


async def _open_all(openers: list) -> list:
    """Runs the coroutine factories a few dozen at a time, as many clients would."""
    gate = asyncio.Semaphore(OPENING_AT_ONCE)

    async def one(opener) -> object:
        async with gate:
            return await opener()

    return await asyncio.gather(*(one(opener) for opener in openers))


async def _answers_at_once(calls: dict[str, object]) -> dict[str, float]:
    """Each unary call's answer time; DEADLINE_EXCEEDED fails the test."""
    seconds = {}
    for name, call in calls.items():
        started = time.monotonic()
        await call(timeout=ANSWER_SECONDS)
        seconds[name] = time.monotonic() - started
    return seconds


def _milliseconds(answers: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in answers.items())


def test_a_model_service_answers_with_1000_idle_frame_streams_open(crowd: LocalStack) -> None:
    info = crowd.info()
    assert info is not None
    pid = info.pids["faceswap"]
    threads_before, rss_before = _process_figures(pid)

    async def scenario() -> dict:
        channels = [
            grpc.aio.insecure_channel(
                info.faceswap_address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(10)
        ]
        try:
            stubs = [faceswap_pb2_grpc.FaceSwapServiceStub(channel) for channel in channels]
            streams = [stubs[index % 10].SwapFaces() for index in range(FACESWAP_STREAMS)]
            # An idle stream sends nothing, not even its config; wait until all are open.
            await asyncio.gather(*(stream.wait_for_connection() for stream in streams))
            deadline = time.monotonic() + 60
            while True:
                extra = stubs[0].SwapFaces()
                try:
                    refused = await asyncio.wait_for(_refusal(extra), 2)
                    break
                except TimeoutError:
                    # Not refused: some of the thousand have not reached the server yet.
                    extra.cancel()
                    assert time.monotonic() < deadline, "the 1001st stream was never refused"
            answers = await _answers_at_once(
                {
                    "ListFaceSwapEngines": lambda timeout: stubs[1].ListFaceSwapEngines(
                        faceswap_pb2.ListFaceSwapEnginesRequest(), timeout=timeout
                    ),
                    "health Check": lambda timeout: health_pb2_grpc.HealthStub(channels[2]).Check(
                        health_pb2.HealthCheckRequest(), timeout=timeout
                    ),
                }
            )
            figures = _process_figures(pid)
            still_open = sum(not stream.done() for stream in streams)
            for stream in streams:
                stream.cancel()
            return {"refused": refused, "answers": answers, "figures": figures, "open": still_open}
        finally:
            for channel in channels:
                await channel.close()

    result = asyncio.run(scenario())
    threads, rss = result["figures"]
    print(
        f"\nfaceswap with {result['open']} idle frame streams: {threads} threads (idle: "
        f"{threads_before}), RSS {rss / 2**20:.0f} MiB (idle: {rss_before / 2**20:.0f} MiB); "
        "answers: " + _milliseconds(result["answers"])
    )
    assert result["open"] == FACESWAP_STREAMS
    code, details, retry_delay = result["refused"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in all" in details
    assert retry_delay
    assert all(seconds < ANSWER_SECONDS for seconds in result["answers"].values())


def test_the_orchestrator_answers_unary_calls_and_health_with_over_1000_idle_streams_open(
    crowd: LocalStack, live_jobs: dict[str, str]
) -> None:
    info = crowd.info()
    assert info is not None
    pid = info.pids["orchestrator"]
    threads_before, rss_before = _process_figures(pid)

    async def scenario() -> dict:
        async with _channel(info.orchestrator_address) as channel:
            jobs = jobs_grpc.JobServiceStub(channel)
            media = media_grpc.MediaServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            templates = templates_grpc.TemplateServiceStub(channel)
            calls: list[grpc.aio.Call] = []
            stop_trickle = asyncio.Event()

            async def watch_job(tenant: str, address: str) -> None:
                call = jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(name=live_jobs[tenant]),
                    metadata=_who(info.api_keys[tenant], address),
                )
                calls.append(call)
                assert (await call.read()).job.name == live_jobs[tenant]

            async def watch_health(address: str) -> None:
                call = health.Watch(health_pb2.HealthCheckRequest(), metadata=_who("", address))
                calls.append(call)
                assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING

            async def trickle(call: grpc.aio.StreamUnaryCall) -> None:
                await call.write(
                    media_pb2.UploadMediaRequest(
                        metadata=media_pb2.UploadMediaMetadata(filename="slow.png")
                    )
                )
                while not call.done() and not stop_trickle.is_set():
                    await asyncio.sleep(TRICKLE_SECONDS)
                    await call.write(media_pb2.UploadMediaRequest(chunk=b"x"))

            uploads: list[grpc.aio.StreamUnaryCall] = []
            trickles = []

            async def upload(tenant: str, address: str) -> None:
                call = media.UploadMedia(metadata=_who(info.api_keys[tenant], address))
                uploads.append(call)
                calls.append(call)
                trickles.append(asyncio.ensure_future(trickle(call)))

            # Each tenant's streams come from their own addresses, PER_ADDRESS at most each.
            openers = []
            for number, tenant in enumerate(TENANTS, start=1):
                for index in range(UPLOADS_PER_TENANT + WATCHES_PER_TENANT):
                    address = f"10.{number}.0.{index // PER_ADDRESS}"
                    kind = upload if index < UPLOADS_PER_TENANT else watch_job
                    openers.append(lambda k=kind, t=tenant, a=address: k(t, a))
            openers += [
                lambda a=f"10.9.0.{index // PER_ADDRESS}": watch_health(a)
                for index in range(HEALTH_WATCHES)
            ]
            started = time.monotonic()
            await _open_all(openers)
            opening_seconds = time.monotonic() - started
            open_streams = len(calls)

            # Callers without a valid key hold nothing: refused at once, all of them.
            unauthenticated = [
                jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(name=live_jobs["local"]),
                    metadata=_who(key, f"10.8.0.{index % 200}"),
                )
                for index, key in enumerate(["", "rmk_not-a-real-key"] * 100)
            ]
            refused_unauthenticated = await asyncio.gather(*map(_refusal, unauthenticated))

            # Streams beyond each cap are refused at once, with a retry hint.
            over_tenant = await _refusal(
                jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(name=live_jobs["acme"]),
                    metadata=_who(info.api_keys["acme"], "10.7.0.1"),
                )
            )
            over_tenant_upload = await _refusal(
                media.UploadMedia(metadata=_who(info.api_keys["globex"], "10.7.0.2"))
            )
            over_address = await _refusal(
                health.Watch(health_pb2.HealthCheckRequest(), metadata=_who("", "10.1.0.0"))
            )
            # The rest of the places in all, then one more.
            await _open_all(
                [
                    lambda a=f"10.9.1.{index // PER_ADDRESS}": watch_health(a)
                    for index in range(MAX_STREAMS - open_streams)
                ]
            )
            over_all = await _refusal(
                health.Watch(health_pb2.HealthCheckRequest(), metadata=_who("", "10.6.0.1"))
            )

            local_key = _who(info.api_keys["local"], "10.5.0.1")
            answers = await _answers_at_once(
                {
                    "GetJob": lambda timeout: jobs.GetJob(
                        jobs_pb2.GetJobRequest(name=live_jobs["local"]),
                        metadata=local_key,
                        timeout=timeout,
                    ),
                    "ListTemplates": lambda timeout: templates.ListTemplates(
                        templates_pb2.ListTemplatesRequest(), metadata=local_key, timeout=timeout
                    ),
                    "health Check": lambda timeout: health.Check(
                        health_pb2.HealthCheckRequest(), timeout=timeout
                    ),
                }
            )
            figures = _process_figures(pid)
            still_open = sum(not call.done() for call in calls)

            stop_trickle.set()
            for call in calls:
                call.cancel()
            await asyncio.gather(*trickles, return_exceptions=True)
            return {
                "opening_seconds": opening_seconds,
                "open_streams": still_open,
                "unauthenticated": refused_unauthenticated,
                "over": {
                    "tenant": over_tenant,
                    "tenant upload": over_tenant_upload,
                    "address": over_address,
                    "all": over_all,
                },
                "answers": answers,
                "figures": figures,
            }

    result = asyncio.run(scenario())
    threads, rss = result["figures"]
    print(
        f"\norchestrator with {result['open_streams']} idle streams: {threads} threads "
        f"(idle: {threads_before}), RSS {rss / 2**20:.0f} MiB (idle: {rss_before / 2**20:.0f} "
        f"MiB); opened in {result['opening_seconds']:.1f} s; answers: "
        + _milliseconds(result["answers"])
    )
    assert result["open_streams"] == MAX_STREAMS
    assert {code for code, _, _ in result["unauthenticated"]} == {grpc.StatusCode.UNAUTHENTICATED}
    for cap, (code, details, retry_delay) in result["over"].items():
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (cap, details)
        assert retry_delay and retry_delay > 0, cap
    assert "per tenant" in result["over"]["tenant"][1]
    assert "per tenant" in result["over"]["tenant upload"][1]
    assert "per caller address" in result["over"]["address"][1]
    assert "in all" in result["over"]["all"][1]
    assert all(seconds < ANSWER_SECONDS for seconds in result["answers"].values())


def test_a_stalled_upload_is_ended_by_the_idle_timeout_which_frees_its_place(
    crowd: LocalStack,
) -> None:
    info = crowd.info()
    assert info is not None
    key = info.api_keys["acme"]

    async def scenario() -> tuple[list, list, tuple, float]:
        async with _channel(info.orchestrator_address) as channel:
            media = media_grpc.MediaServiceStub(channel)

            async def stalled(address: str, send_metadata: bool) -> grpc.aio.StreamUnaryCall:
                call = media.UploadMedia(metadata=_who(key, address))
                if send_metadata:
                    await call.write(
                        media_pb2.UploadMediaRequest(
                            metadata=media_pb2.UploadMediaMetadata(filename="stalled.png")
                        )
                    )
                return call

            started = time.monotonic()
            # One address's places, half silent from the start, half after their metadata.
            first = [await stalled("10.4.0.1", index % 2 == 0) for index in range(PER_ADDRESS)]
            over = await _refusal(await stalled("10.4.0.1", True))
            ended = [await asyncio.wait_for(call.code(), 3 * IDLE_TIMEOUT) for call in first]
            elapsed = time.monotonic() - started
            details = [await call.details() for call in first]
            again = [await stalled("10.4.0.1", True) for _ in range(PER_ADDRESS)]
            await asyncio.sleep(1.0)
            admitted = [not call.done() for call in again]
            for call in again:
                call.cancel()
            return list(zip(ended, details, strict=True)), admitted, over, elapsed

    ended, admitted, over, elapsed = asyncio.run(scenario())
    assert over[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    for code, details in ended:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "sent nothing" in details
    assert IDLE_TIMEOUT <= elapsed < 3 * IDLE_TIMEOUT
    assert all(admitted)


# gRPC-web through the edge: one HTTP/1.1 connection per call, as browsers make them.

HEALTH_REQUEST = health_pb2.HealthCheckRequest().SerializeToString()
GRPC_WEB_HEADERS = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}


def _grpc_web_call(
    port: int, path: str, message: bytes, headers: dict[str, str]
) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_SECONDS * 5)
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    connection.request("POST", path, body=body, headers={**GRPC_WEB_HEADERS, **headers})
    return connection.getresponse()


def _grpc_web_outcome(response: http.client.HTTPResponse) -> tuple[int, bytes]:
    """(0, first message) for a stream that answers, else (grpc-status, b"")."""
    if response.getheader("grpc-status") is not None:  # a trailers-only answer
        return int(response.getheader("grpc-status", "2")), b""
    flags, length = response.read(1)[0], int.from_bytes(response.read(4), "big")
    frame = response.read(length)
    if flags & 0x80:  # trailers: "grpc-status:8\r\ngrpc-message:..."
        trailers = dict(
            line.split(":", 1) for line in frame.decode().strip().split("\r\n") if ":" in line
        )
        return int(trailers["grpc-status"]), b""
    return 0, frame


def test_idle_grpc_web_streams_through_the_edge_do_not_block_a_unary_call(
    crowd: LocalStack, live_jobs: dict[str, str]
) -> None:
    info = crowd.info()
    assert info is not None
    port = int(info.edge_url.rsplit(":", 1)[1])
    key = {"x-api-key": info.api_keys["local"]}
    watch = jobs_pb2.WatchJobRequest(name=live_jobs["local"]).SerializeToString()
    path = "/remind.v1.JobService/WatchJob"
    # One address floods the edge; a forged x-forwarded-for does not make it someone else.
    flood = [
        _grpc_web_call(port, path, watch, {**key, "x-forwarded-for": f"10.3.0.{index}"})
        for index in range(3 * PER_ADDRESS)
    ]
    try:
        outcomes = [_grpc_web_outcome(response) for response in flood]
        unauthenticated = [
            _grpc_web_outcome(_grpc_web_call(port, path, watch, {})) for _ in range(PER_ADDRESS)
        ]
        health_watch = _grpc_web_call(port, "/grpc.health.v1.Health/Watch", HEALTH_REQUEST, {})
        started = time.monotonic()
        templates = _grpc_web_call(
            port,
            "/remind.v1.TemplateService/ListTemplates",
            templates_pb2.ListTemplatesRequest().SerializeToString(),
            key,
        )
        code, message = _grpc_web_outcome(templates)
        answer_seconds = time.monotonic() - started
    finally:
        for response in flood:
            response.close()
    print(
        f"\nListTemplates through the edge beside {PER_ADDRESS} idle streams: "
        f"{answer_seconds * 1000:.0f} ms"
    )
    watching = [frame for status, frame in outcomes if status == 0]
    assert len(watching) == PER_ADDRESS
    assert all(jobs_pb2.WatchJobResponse.FromString(f).job.name for f in watching)
    refused = [status for status, _ in outcomes if status != 0]
    assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] * (2 * PER_ADDRESS)
    assert {status for status, _ in unauthenticated} == {grpc.StatusCode.UNAUTHENTICATED.value[0]}
    assert health_watch.status == 404  # Watch is not routed to the public edge
    assert code == 0 and templates_pb2.ListTemplatesResponse.FromString(message).templates
    assert answer_seconds < ANSWER_SECONDS


class _SlowTemplates(templates_grpc.TemplateServiceServicer):
    """Unary calls that take their time, as a VerifyMedia or a CreateTemplate does."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def ListTemplates(self, request, context):  # type: ignore[no-untyped-def]
        time.sleep(self.seconds)
        return templates_pb2.ListTemplatesResponse()


def test_slow_unary_calls_leave_threads_for_health_checks() -> None:
    workers = 6
    slow_method = f"/{TEMPLATE_SERVICE.full_name}/ListTemplates"
    running = start_server(
        ServerSettings(port=0, max_workers=workers),
        [(_SlowTemplates(5.0), TEMPLATE_SERVICE)],
        slow_methods=[slow_method],
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            templates = templates_grpc.TemplateServiceStub(channel)
            slow = [
                templates.ListTemplates.future(templates_pb2.ListTemplatesRequest(), timeout=30)
                for _ in range(workers * 2)
            ]
            time.sleep(1.0)  # every slow call has reached the server
            started = time.monotonic()
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_SECONDS)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - started < ANSWER_SECONDS
            outcomes = [call.exception() for call in slow]
        refused = [error for error in outcomes if error is not None]
        # Half of the unary threads ran slow calls; the others were refused at once.
        assert len(refused) == workers * 2 - workers // 2, [e and e.details() for e in outcomes]
        assert all(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for error in refused)
        assert "busy" in refused[0].details()
    finally:
        running.stop()
