"""GIF job benchmark: frames/s end to end, how much wall time goes outside the engine, and
what signing the result's Content Credentials adds.

Runs the real stack on free loopback ports, times GIF jobs through the public API, then times
the same engine on the same template frames in-process (the engine's own frame processing),
and the stack's own signer on a job's GIF. Prints a table and writes out/gif_bench.json.
"""

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.registry import engine_factories
from services.shared import images, video
from services.shared.content_credentials import ContentSigner, Provenance
from services.shared.settings import S3Settings
from services.shared.storage import ObjectStore
from services.stack import LocalStack, ports_free

RUNS = 3


def _free_base() -> int:
    return next(base for base in range(30000, 34000, 20) if ports_free(base))


def time_jobs(client: RemindClient, photo: bytes, template: str) -> tuple[list[float], int, str]:
    face = client.upload(photo, "face.png").name
    seconds, frames, result = [], 0, ""
    for _ in range(RUNS):
        started = time.perf_counter()
        job = client.create_gif_job(face, template)
        final = list(client.watch(job.name))[-1]
        seconds.append(time.perf_counter() - started)
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        frames, result = final.result.frames_total, final.result.media
    return seconds, frames, result


def time_engine(template_path: Path) -> list[float]:
    engine = engine_factories(FaceSwapSettings.load())["landmark_warp"]()
    engine.load()
    identity = engine.prepare_identity(data.astronaut())
    frames = list(video.iter_frames(template_path))
    seconds = []
    for _ in range(RUNS):
        swapper = engine.start_stream(identity)
        started = time.perf_counter()
        for frame in frames:
            swapper.process(frame)
        seconds.append(time.perf_counter() - started)
    return seconds


def time_signing(stack: LocalStack, result: Path, work: Path) -> list[float]:
    """The orchestrator's signing step on a GIF of the result's size (the result itself, which
    gains a second manifest: the work is the same)."""
    credentials = stack.signing_credentials()
    signer = ContentSigner(str(credentials.certificate_chain), str(credentials.private_key))
    provenance = Provenance("templates/benchmark", "image/gif", "0" * 64, {"faceswap": "x"})
    seconds = []
    for run in range(RUNS):
        started = time.perf_counter()
        signer.sign(result, work / f"signed-{run}.gif", "image/gif", provenance)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    photo = images.encode_image(data.astronaut(), "png")
    with tempfile.TemporaryDirectory() as work:
        stack = LocalStack(Path(work) / "stack", _free_base())
        info = stack.start()
        try:
            with RemindClient(info.orchestrator_address, info.api_keys["local"]) as client:
                template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0]
                job_seconds, frames, result_media = time_jobs(client, photo, template.name)
                result = Path(work) / "result.gif"
                result.write_bytes(client.download(result_media))
            signing_seconds = time_signing(stack, result, Path(work))
            store = ObjectStore(
                S3Settings(
                    endpoint=info.s3_endpoint,
                    access_key=info.access_key,
                    secret_key=info.secret_key,
                )
            )
            template_path = Path(work) / "template.gif"
            store.download(
                "remind-templates", f"builtin/{template.name.split('/')[1]}.gif", template_path
            )
        finally:
            stack.stop()
        engine_seconds = time_engine(template_path)

    job = statistics.median(job_seconds)
    engine = statistics.median(engine_seconds)
    signing = statistics.median(signing_seconds)
    results = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores",
        "template": template.name,
        "frames": frames,
        "runs": RUNS,
        "gif_job_seconds": round(job, 3),
        "gif_job_frames_per_second": round(frames / job, 2),
        "engine_seconds": round(engine, 3),
        "engine_frames_per_second": round(frames / engine, 2),
        "share_outside_engine": round(1 - engine / job, 3),
        "job_over_engine_ratio": round(job / engine, 3),
        "signing_seconds": round(signing, 4),
        "signing_share_of_job": round(signing / job, 4),
    }
    print(f"{'figure':<28}{'value':>12}")
    for key, value in results.items():
        print(f"{key:<28}{value!s:>12}" if not isinstance(value, str) else f"{key:<28} {value}")
    Path("out").mkdir(exist_ok=True)
    Path("out/gif_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
