"""Jobs on the queue (NATS JetStream): throughput with one and with two orchestrator replicas on
the same load, the time from killing the replica running a job to the job running again, and
what queueing adds to a Create call.

Runs the real stack with two orchestrator replicas on free loopback ports and the default
settings (a 30 s job lease). Prints a table and writes out/job_queue_bench.json.
"""

import asyncio
import io
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import nats
import numpy as np
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.samples import sample_face_photo
from services.shared import images, video
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.stack import NATS_USER, LocalStack, StackInfo, pid_alive, ports_free

LOAD = 12  # GIF jobs of the built-in 42-frame template, created at once
CREATES = 20
PUBLISHES = 200
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


def _free_base() -> int:
    return next(base for base in range(30000, 34000, 40) if ports_free(base))


def jobs_per_minute(client: RemindClient, face: str, template: str) -> float:
    started = time.perf_counter()
    names = [client.create_gif_job(face, template).name for _ in range(LOAD)]
    for name in names:
        final = list(client.watch(name))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    return LOAD * 60 / (time.perf_counter() - started)


def long_template(client: RemindClient, work: Path) -> str:
    """A 118-frame 256² GIF: long enough to kill its replica in the middle."""
    path = work / "long.gif"
    base = cv2.resize(data.astronaut(), (256, 256))
    with video.GifEncoder(path, 256, 256, 20) as gif:
        for index in range(118):
            shift = np.array(
                [[1, 0, 4 * np.sin(index / 5)], [0, 1, 3 * np.cos(index / 7)]], dtype=np.float32
            )
            gif.write(cv2.warpAffine(base, shift, (256, 256), borderMode=cv2.BORDER_REFLECT))
    upload = client.upload(path.read_bytes(), path.name)
    return client.templates.CreateTemplate(
        templates_pb2.CreateTemplateRequest(media=upload.name, template_id="bench-long")
    ).template.name


def runner_of(stack: LocalStack, job: str) -> str:
    while True:
        for name in ("orchestrator", "orchestrator-2"):
            if f"job {job} running here" in (stack.state_dir / "logs" / f"{name}.log").read_text():
                return name
        time.sleep(0.05)


def seconds_to_resume(stack: LocalStack, info: StackInfo, face: str, template: str) -> float:
    """Kills the replica running a job mid-frames; the time until the other one runs it."""
    with RemindClient(info.orchestrator_address, info.api_keys["local"]) as client:
        job = client.create_gif_job(face, template).name
    runner = runner_of(stack, job)
    survivor = "orchestrator-2" if runner == "orchestrator" else "orchestrator"
    with RemindClient(info.address(survivor), info.api_keys["local"]) as client:
        killed_at = None
        for event in client.watch(job):
            if killed_at is None and event.progress.frames_done >= 10:
                pid = info.pids[runner]
                os.kill(pid, signal.SIGKILL)
                while pid_alive(pid):
                    time.sleep(0.01)
                killed_at = time.time()
            elif killed_at and event.update_time.ToNanoseconds() / 1e9 > killed_at:
                resumed = time.time() - killed_at
                client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job))
                return resumed
    raise RuntimeError("the job never resumed")


def create_seconds(client: RemindClient, face: str, template: str) -> list[float]:
    seconds = []
    for _ in range(CREATES):
        started = time.perf_counter()
        job = client.create_gif_job(face, template)
        seconds.append(time.perf_counter() - started)
        client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name))
    return seconds


def publish_seconds(info: StackInfo) -> list[float]:
    """A JetStream publish like a Create's (file storage, work queue), on a stream of its own."""

    async def measure() -> list[float]:
        connection = await nats.connect(info.nats_url, user=NATS_USER, password=info.nats_password)
        stream = connection.jetstream()
        await stream.add_stream(
            StreamConfig(
                name="BENCH_PUBLISH",
                subjects=["bench.publish"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        seconds = []
        for index in range(PUBLISHES):
            started = time.perf_counter()
            await stream.publish("bench.publish", b"{}", headers={"Nats-Msg-Id": str(index)})
            seconds.append(time.perf_counter() - started)
        await stream.delete_stream("BENCH_PUBLISH")
        await connection.close()
        return seconds

    return asyncio.run(measure())


def saved_identity_seconds(info: StackInfo) -> list[float]:
    """The identity a Create saves with its job: one small object written."""
    store = ObjectStore(S3Settings(info.s3_endpoint, info.access_key, info.secret_key))
    seconds = []
    for index in range(CREATES):
        identity = io.BytesIO(os.urandom(2200))  # the size of a landmark_warp identity
        started = time.perf_counter()
        store.put("remind-results", f"bench/{index}", identity, 2200, "application/octet-stream")
        seconds.append(time.perf_counter() - started)
        store.delete("remind-results", f"bench/{index}")
    return seconds


def main() -> None:
    photo = images.encode_image(sample_face_photo(0), "png")
    with tempfile.TemporaryDirectory() as work:
        stack = LocalStack(Path(work) / "stack", _free_base(), orchestrators=2)
        info = stack.start()
        try:
            with RemindClient(info.orchestrator_address, info.api_keys["local"]) as client:
                face = client.upload(photo, "face.png").name
                template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
                jobs_per_minute(client, face, template)  # warm both replicas and the engines
                stack.stop("orchestrator-2")
                one = jobs_per_minute(client, face, template)
                info = stack.start()
                two = jobs_per_minute(client, face, template)
                creates = create_seconds(client, face, template)
                long = long_template(client, Path(work))
            resume = seconds_to_resume(stack, info, face, long)
            publishes = publish_seconds(info)
            saves = saved_identity_seconds(info)
        finally:
            stack.stop()

    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 1)

    results = {
        "load_jobs": LOAD,
        "jobs_per_minute_one_replica": round(one, 1),
        "jobs_per_minute_two_replicas": round(two, 1),
        "two_over_one": round(two / one, 2),
        "seconds_from_kill_to_resume": round(resume, 1),
        "create_ms_p50": ms(creates),
        "jetstream_publish_ms_p50": ms(publishes),
        "saved_identity_write_ms_p50": ms(saves),
    }
    r = results
    print(
        f"jobs/minute, {LOAD} GIF jobs at once: one replica {r['jobs_per_minute_one_replica']}, "
        f"two replicas {r['jobs_per_minute_two_replicas']} ({r['two_over_one']}x)"
    )
    print(f"kill -9 of the running replica to its job running again: {resume:.1f} s")
    print(
        f"CreateGifJob p50 {r['create_ms_p50']} ms; queueing adds a JetStream publish (p50 "
        f"{r['jetstream_publish_ms_p50']} ms) and the saved identity (p50 "
        f"{r['saved_identity_write_ms_p50']} ms)"
    )
    Path("out").mkdir(exist_ok=True)
    Path("out/job_queue_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
