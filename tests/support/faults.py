"""What the fault tests share: templates long enough to do something to a job in the middle,
and killing a stack's process for real."""

import os
import signal
import time

import cv2
import numpy as np
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.shared import video
from services.stack import LocalStack, pid_alive


def long_gif_template(
    client: RemindClient, workdir, template_id: str, frames: int = 118, fps: int = 20
) -> str:
    """A swaying 256² astronaut GIF of `frames` frames, made and uploaded once per stack."""
    try:
        return client.templates.GetTemplate(
            templates_pb2.GetTemplateRequest(name=f"templates/{template_id}")
        ).template.name
    except Exception:  # noqa: BLE001 - not created yet
        pass
    path = workdir / f"{template_id}.gif"
    base = cv2.resize(data.astronaut(), (256, 256))
    with video.GifEncoder(path, 256, 256, fps) as gif:
        for index in range(frames):
            shift = np.float32([[1, 0, 4 * np.sin(index / 5)], [0, 1, 3 * np.cos(index / 7)]])
            gif.write(cv2.warpAffine(base, shift, (256, 256), borderMode=cv2.BORDER_REFLECT))
    upload = client.upload(path.read_bytes(), path.name)
    return client.templates.CreateTemplate(
        templates_pb2.CreateTemplateRequest(media=upload.name, template_id=template_id)
    ).template.name


def kill_hard(stack: LocalStack, name: str) -> int:
    """SIGKILLs one of the stack's processes and waits until it is gone; returns its pid."""
    pid = stack.info().pids[name]
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)
    return pid


def separating_voice(job: jobs_pb2.Job) -> bool:
    """The voice service is at work on the job's recording (past the stage's first report)."""
    progress = job.progress
    return progress.stage == jobs_pb2.JOB_STAGE_EXTRACTING_VOICE and progress.fraction > 0.031
