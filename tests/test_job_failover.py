"""Jobs on two orchestrator replicas and NATS JetStream, with real kills: every accepted job
ends exactly once, on whichever replica is left, and a stalled worker cannot undo it."""

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import grpc
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2

from services import samples
from services.client import RemindClient
from services.shared import images, video
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.stack import LocalStack, StackInfo
from tests.conftest import free_base_port
from tests.support.faults import kill_hard, long_gif_template

LEASE_SECONDS = 4
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
REPLICAS = ("orchestrator", "orchestrator-2")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(
        tmp_path_factory.mktemp("failover"),
        free_base_port(),
        extra_env={
            "REMIND_ORCHESTRATOR_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
            "REMIND_ORCHESTRATOR_MAX_JOBS_PER_TENANT": "40",
            "REMIND_ORCHESTRATOR_JOB_FINISH_SECONDS": "1",
            "REMIND_ORCHESTRATOR_STREAM_RETRY_SECONDS": "20",
        },
        orchestrators=2,
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture
def replicas(stack: LocalStack) -> Iterator[dict[str, RemindClient]]:
    """A client of each replica, the stack whole again first."""
    info = stack.start()
    with ExitStack() as clients:
        yield {
            name: clients.enter_context(RemindClient(info.address(name), info.api_keys["local"]))
            for name in REPLICAS
        }


@pytest.fixture
def face(replicas: dict[str, RemindClient], user_photo) -> str:
    return replicas["orchestrator"].upload(images.encode_image(user_photo, "png"), "me.png").name


def store_of(info: StackInfo) -> ObjectStore:
    return ObjectStore(S3Settings(info.s3_endpoint, info.access_key, info.secret_key))


def attempts(stack: LocalStack, job: str) -> dict[int, str]:
    """Which replica started the job at each attempt, from their logs."""
    pattern = re.compile(rf"job {job} running here \(attempt (\d+)\)")
    taken: dict[int, str] = {}
    for name in REPLICAS:
        log = stack.state_dir / "logs" / f"{name}.log"
        if log.exists():
            for number in pattern.findall(log.read_text()):
                taken[int(number)] = name
    return taken


def running_on(stack: LocalStack, job: str, attempt: int = 1, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        taken = attempts(stack, job)
        if attempt in taken:
            return taken[attempt]
        time.sleep(0.1)
    raise AssertionError(f"{job} had no attempt {attempt}: {attempts(stack, job)}")


def other(name: str) -> str:
    return next(replica for replica in REPLICAS if replica != name)


def counter(info: StackInfo, service: str, pattern: str) -> float:
    """The sum of a service's metric lines that match `pattern`."""
    text = urllib.request.urlopen(info.metrics_url(service), timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line)
    )


def wait_ended(client: RemindClient, name: str, timeout: float = 300) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(name)
        if job.state in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{name} did not end: {client.get_job(name)}")


def result_objects(info: StackInfo, job: str) -> list[str]:
    """Everything stored under the job in the results bucket once its worker is done: its
    result, and any saved work (removed just after the job's end is written)."""
    deadline = time.monotonic() + 10
    while True:
        keys = store_of(info).list_keys("remind-results", f"local/{job.removeprefix('jobs/')}/")
        if not any("/work/" in key for key in keys) or time.monotonic() > deadline:
            return keys
        time.sleep(0.2)


def kill_mid_frames(
    stack: LocalStack, replicas: dict[str, RemindClient], job: jobs_pb2.Job, frames: int
) -> tuple[str, jobs_pb2.Job]:
    """Kills the replica running the job once it has rendered `frames` frames; returns that
    replica and the job's end, watched from the other replica."""
    runner = running_on(stack, job.name)
    killed = False
    for event in replicas[other(runner)].watch(job.name):
        rendering = event.progress.frames_total and event.progress.frames_done >= frames
        if not killed and rendering:
            kill_hard(stack, runner)
            killed = True
        final = event
    assert killed
    return runner, final


def test_a_gif_job_whose_replica_is_killed_mid_frames_finishes_on_the_other(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str, tmp_path
):
    first = replicas["orchestrator"]
    template = long_gif_template(first, tmp_path, "failover-long")
    job = first.create_gif_job(face, template)
    runner, final = kill_mid_frames(stack, replicas, job, 10)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert attempts(stack, job.name) == {1: runner, 2: other(runner)}
    result = tmp_path / "result.gif"
    result.write_bytes(replicas[other(runner)].download(final.result.media))
    assert sum(1 for _ in video.iter_frames(result)) == 118
    # One result, and the work the job saved (its identity) gone with its end.
    assert len(result_objects(stack.info(), job.name)) == 1


def test_an_mp4_job_whose_replica_is_killed_finishes_without_separating_the_voice_again(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str
):
    first = replicas["orchestrator"]
    info = stack.info()
    recording = samples.wav_bytes(samples.make_mix("en-us", 4.0).mixture)
    voice = first.upload(recording, "voice.wav").name
    template = first.list_templates(2)[0].name
    separations = r'remind_rpcs_total\{.*method="SeparateVoice".*\}'
    before = counter(info, "voice", separations)
    job = first.create_video_job(face, voice, template)
    runner, final = kill_mid_frames(stack, replicas, job, 20)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert attempts(stack, job.name) == {1: runner, 2: other(runner)}
    assert final.result.frames_total == final.result.frames_with_face > 0
    # The second attempt reused the vocals and features the first one saved.
    assert counter(info, "voice", separations) - before == 1
    assert len(result_objects(info, job.name)) == 1


def test_a_stalled_worker_cannot_overwrite_the_result_of_the_worker_that_took_over(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str, tmp_path
):
    first = replicas["orchestrator"]
    template = long_gif_template(first, tmp_path, "failover-long")
    job = first.create_gif_job(face, template)
    runner = running_on(stack, job.name)
    pid = stack.info().pids[runner]
    stopped = False
    try:
        for event in replicas[other(runner)].watch(job.name):
            if not stopped and event.progress.frames_done >= 10:
                os.kill(pid, signal.SIGSTOP)  # stalled past its lease, yet alive
                stopped = True
            final = event
    finally:
        os.kill(pid, signal.SIGCONT)
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert attempts(stack, job.name)[2] == other(runner)
    # The stalled worker wakes up with its frames half done, finds its lease and the record
    # taken over, and stops: the job, its result and its one object stay as they were.
    log = stack.state_dir / "logs" / f"{runner}.log"
    deadline = time.monotonic() + 3 * LEASE_SECONDS
    while "taken over by another worker" not in log.read_text():
        assert time.monotonic() < deadline, "the stalled worker never noticed"
        time.sleep(0.2)
    time.sleep(LEASE_SECONDS)
    again = replicas[other(runner)].get_job(job.name)
    assert again.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert again.result.media == final.result.media
    assert len(result_objects(stack.info(), job.name)) == 1


def test_killing_nats_mid_load_loses_no_accepted_job_and_refuses_new_ones_cleanly(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str, tmp_path
):
    first = replicas["orchestrator"]
    info = stack.info()
    template = long_gif_template(first, tmp_path, "failover-short", frames=24)
    ended = r"remind_jobs_ended_total"
    ended_before = sum(counter(info, name, ended) for name in REPLICAS)
    accepted = [first.create_gif_job(face, template) for _ in range(6)]
    running_on(stack, accepted[0].name)
    kill_hard(stack, "nats")
    store = store_of(info)
    records = len(store.list_keys("remind-records", "local/jobs/"))
    with pytest.raises(grpc.RpcError) as refused:
        first.create_gif_job(face, template)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (
        "job queue" in refused.value.details() and "nothing was stored" in refused.value.details()
    )
    assert len(store.list_keys("remind-records", "local/jobs/")) == records
    stack.start()  # the same JetStream store
    finals = [wait_ended(first, job.name) for job in accepted]
    assert [job.state for job in finals] == [jobs_pb2.JOB_STATE_SUCCEEDED] * len(accepted), [
        job.error.message for job in finals
    ]
    for job in accepted:
        assert len(result_objects(info, job.name)) == 1
    # Each job ended once, on one replica (none of the two restarted in this test).
    ended_after = sum(counter(info, name, ended) for name in REPLICAS)
    assert ended_after - ended_before == len(accepted)


def test_forty_jobs_over_two_replicas_are_watched_and_cancelled_from_either(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str, tmp_path
):
    first, second = replicas["orchestrator"], replicas["orchestrator-2"]
    long = long_gif_template(first, tmp_path, "failover-long")
    short = long_gif_template(first, tmp_path, "failover-short", frames=24)
    jobs = [first.create_gif_job(face, long)]
    jobs += [first.create_gif_job(face, short) for _ in range(39)]
    cancelled = {job.name for job in jobs[-5:]}
    try:
        for name in cancelled:
            second.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=name))
        # The long job, watched live from the replica that does not run it, to its end.
        watcher = replicas[other(running_on(stack, jobs[0].name))]
        events = list(watcher.watch(jobs[0].name))
        assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert len({event.progress.frames_done for event in events}) > 10, "no live progress"
        finals = {job.name: wait_ended(second, job.name) for job in jobs}
    finally:
        for job in jobs:  # a failed check leaves no work behind for the next test
            try:
                first.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
            except grpc.RpcError:
                pass  # ended
    for name, job in finals.items():
        expected = (
            jobs_pb2.JOB_STATE_CANCELLED if name in cancelled else jobs_pb2.JOB_STATE_SUCCEEDED
        )
        assert job.state == expected, (name, job.error.message)
    ran_on = {attempts(stack, name).get(1) for name in finals if name not in cancelled}
    assert ran_on == set(REPLICAS)


def test_a_job_that_kills_its_worker_every_time_fails_after_three_and_blocks_nothing(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str, tmp_path
):
    first = replicas["orchestrator"]
    poison = first.create_gif_job(face, long_gif_template(first, tmp_path, "failover-long"))
    template = long_gif_template(first, tmp_path, "failover-short", frames=24)
    behind = [first.create_gif_job(face, template) for _ in range(3)]
    for attempt in (1, 2, 3):
        kill_hard(stack, running_on(stack, poison.name, attempt))
        stack.start()  # its supervisor brings it back
    with RemindClient(
        stack.info().address("orchestrator"), stack.info().api_keys["local"]
    ) as again:
        final = wait_ended(again, poison.name)
        assert final.state == jobs_pb2.JOB_STATE_FAILED
        assert "failed 3 times" in final.error.message, final.error.message
        assert [wait_ended(again, job.name).state for job in behind] == [
            jobs_pb2.JOB_STATE_SUCCEEDED
        ] * len(behind)


def test_a_replica_stopped_gracefully_hands_its_job_to_the_other(
    stack: LocalStack, replicas: dict[str, RemindClient], face: str, tmp_path
):
    first = replicas["orchestrator"]
    job = first.create_gif_job(face, long_gif_template(first, tmp_path, "failover-long"))
    runner = running_on(stack, job.name)
    stopping = False
    for event in replicas[other(runner)].watch(job.name):
        if not stopping and event.progress.frames_done >= 10:
            stack.stop(runner)  # SIGTERM; it may finish for 1 s, then hands the job back
            stopping = True
        final = event
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    assert attempts(stack, job.name) == {1: runner, 2: other(runner)}
    assert "handed back" in (stack.state_dir / "logs" / f"{runner}.log").read_text()


def test_jobs_cancelled_as_soon_as_they_are_created_end_cancelled(
    replicas: dict[str, RemindClient], face: str
):
    # A cancel races the worker that takes the job: the message it deletes may be gone already.
    first, second = replicas["orchestrator"], replicas["orchestrator-2"]
    template = first.list_templates(1)[0].name
    jobs = [first.create_gif_job(face, template) for _ in range(20)]
    for job in jobs:
        try:
            second.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    finals = [wait_ended(first, job.name) for job in jobs]
    assert {job.state for job in finals} <= {
        jobs_pb2.JOB_STATE_CANCELLED,
        jobs_pb2.JOB_STATE_SUCCEEDED,
    }
