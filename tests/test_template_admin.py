"""Adding and removing templates, through the `remind` command line and the API, on the real
stack: an owner removes only its own templates, built-in ones stay, and a job queued with a
removed template fails saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import template_service_pb2 as templates_pb2
from skimage import data

from services.client import RemindClient
from services.shared import images, video
from services.shared.storage import ObjectStore
from services.stack import LocalStack, StackInfo

TEMPLATES_BUCKET, RECORDS_BUCKET, UPLOADS_BUCKET = (
    "remind-templates",
    "remind-records",
    "remind-uploads",
)


def face_gif(path: Path, frames: int = 12, fps: float = 6) -> Path:
    """A 2-second GIF of the astronaut's face drifting a little: a valid template."""
    base = cv2.resize(data.astronaut(), (160, 160))
    with video.GifEncoder(path, 160, 160, fps) as gif:
        for index in range(frames):
            shift = np.float32([[1, 0, 2 * np.sin(index / 2)], [0, 1, 0]])
            gif.write(cv2.warpAffine(base, shift, (160, 160), borderMode=cv2.BORDER_REFLECT))
    return path


def add(client: RemindClient, path: Path, template_id: str) -> templates_pb2.Template:
    upload = client.upload(path.read_bytes(), path.name)
    return client.create_template(upload.name, template_id)


def remind(stack_info: StackInfo, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The `remind` command line, as a person runs it against the stack."""
    env = {
        **os.environ,
        "REMIND_ADDRESS": stack_info.orchestrator_address,
        "REMIND_API_KEY": stack_info.api_keys["local"],
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _status(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _names(client: RemindClient) -> list[str]:
    return [template.name for template in client.list_templates()]


def test_a_template_is_added_and_removed_with_the_command_line(
    client: RemindClient, stack_info: StackInfo, store: ObjectStore, tmp_path: Path
) -> None:
    source = face_gif(tmp_path / "cli-source-8f3a.gif")
    added = remind(stack_info, "templates", "add", str(source), "--id", "cli-astronaut",
                   "--name", "Astronaut from the CLI")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "templates/cli-astronaut"
    assert "uploading" in added.stderr and "12 frames" in added.stderr, added.stderr
    template = client.templates.GetTemplate(
        templates_pb2.GetTemplateRequest(name="templates/cli-astronaut")
    ).template
    assert template.display_name == "Astronaut from the CLI" and not template.builtin
    assert store.exists(TEMPLATES_BUCKET, "local/cli-astronaut.gif")
    uploads = [item.key for item in store.list_objects(UPLOADS_BUCKET)]
    assert not [key for key in uploads if key.endswith(source.name)], "the upload is deleted"

    listed = remind(stack_info, "templates")
    assert listed.returncode == 0, listed.stderr
    assert "cli-astronaut" in listed.stdout and "astronaut-sway" in listed.stdout

    removed = remind(stack_info, "templates", "remove", "cli-astronaut")
    assert removed.returncode == 0, removed.stderr
    assert "templates/cli-astronaut removed" in removed.stderr
    assert "templates/cli-astronaut" not in _names(client)
    assert not store.exists(TEMPLATES_BUCKET, "local/cli-astronaut.gif")
    assert not store.exists(RECORDS_BUCKET, "local/templates/cli-astronaut.json")

    again = remind(stack_info, "templates", "remove", "cli-astronaut")
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr, again.stderr


def test_a_template_the_server_refuses_is_reported_by_the_command_line(
    stack_info: StackInfo, tmp_path: Path
) -> None:
    still = tmp_path / "still.png"
    still.write_bytes(images.encode_image(data.astronaut(), "png"))
    refused = remind(stack_info, "templates", "add", str(still), "--id", "cli-still")
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr, refused.stderr


def test_built_in_templates_cannot_be_removed(
    client: RemindClient, stack_info: StackInfo, store: ObjectStore
) -> None:
    error = _status(lambda: client.delete_template("templates/astronaut-sway"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "built-in templates cannot be removed" in error.details()
    refused = remind(stack_info, "templates", "remove", "astronaut-sway")
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    assert "templates/astronaut-sway" in _names(client)
    assert store.exists(TEMPLATES_BUCKET, "builtin/astronaut-sway.gif")


def test_removing_an_unknown_template_is_not_found(client: RemindClient) -> None:
    error = _status(lambda: client.delete_template("templates/never-made"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _status(lambda: client.delete_template("no-prefix")).code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_an_owner_removes_only_its_own_templates(
    client: RemindClient, stack: LocalStack, stack_info: StackInfo, tmp_path: Path
) -> None:
    gif = face_gif(tmp_path / "face.gif")
    address = stack_info.orchestrator_address
    with (
        RemindClient(address, stack_info.api_keys["acme"]) as acme,
        RemindClient(address, token=stack.token("alice")) as alice,
    ):
        add(acme, gif, "acme-only")
        add(client, gif, "local-shared")
        add(alice, gif, "alice-own")
        # Another tenant's template does not exist for this one.
        assert _status(lambda: client.delete_template("templates/acme-only")).code() == (
            grpc.StatusCode.NOT_FOUND
        )
        assert "templates/acme-only" in _names(acme)
        # A person sees the tenant's templates but cannot remove them.
        error = _status(lambda: alice.delete_template("templates/local-shared"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert "only the tenant" in error.details()
        assert "templates/local-shared" in _names(alice)
        # Everyone removes their own.
        alice.delete_template("templates/alice-own")
        acme.delete_template("templates/acme-only")
        client.delete_template("templates/local-shared")
        assert "templates/alice-own" not in _names(alice)
        assert "templates/acme-only" not in _names(acme)
        assert "templates/local-shared" not in _names(client)


def test_a_job_queued_with_a_removed_template_fails_naming_it(
    client: RemindClient, user_photo: np.ndarray, tmp_path: Path
) -> None:
    template = add(client, face_gif(tmp_path / "face.gif"), "removed-while-queued")
    photo = client.upload(images.encode_image(user_photo, "png"), "me.png")
    # Two jobs take the stack's two workers, so the next one waits in the queue.
    busy = [client.create_gif_job(photo.name, "templates/astronaut-sway") for _ in range(2)]
    queued = client.create_gif_job(photo.name, template.name)
    client.delete_template(template.name)
    for job in busy:
        client.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name), timeout=30)
    final = list(client.watch(queued.name, timeout=300))[-1]
    assert final.state == jobs_pb2.JOB_STATE_FAILED
    assert final.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "templates/removed-while-queued was removed" in final.error.message
