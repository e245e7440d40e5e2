"""Content Credentials (C2PA) on every result: signed by a real job, read back by the SDK, by
the API and by `remind verify`; tampering and re-encoding detected; bad certificates refused
at start-up with a reason."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.shared import images, video
from services.shared.content_credentials import (
    ABSENT,
    ENGINES_LABEL,
    TAMPERED,
    TEMPLATE_LABEL,
    TRAINED_ALGORITHMIC_MEDIA,
    VALID,
    ContentSigner,
    Provenance,
)
from services.shared.errors import Misconfigured
from services.shared.provenance import verify_media
from services.shared.signing_certificates import (
    issue_signing_certificate,
    key_pem,
    make_authority,
    pem,
)
from services.stack import LocalStack

TEMPLATES_BUCKET = "remind-templates"
TENANT = "acme"
REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def signed_gif(stack: LocalStack, user_photo: np.ndarray, tmp_path_factory) -> dict:
    info = stack.info()
    # A tenant whose name is no common word, so that finding it in the manifest means a leak.
    with RemindClient(info.orchestrator_address, info.api_keys[TENANT]) as client:
        photo = client.upload(images.encode_image(user_photo, "png"), "alice-portrait.png")
        template = client.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0]
        job = client.create_gif_job(photo.name, template.name)
        final = list(client.watch(job.name))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        path = tmp_path_factory.mktemp("signed") / "result.gif"
        path.write_bytes(client.download(final.result.media))
    return {
        "job": final,
        "path": path,
        "template": template,
        "photo": photo,
        "root": stack.signing_credentials().root.read_text(),
        "secrets": [info.api_keys[TENANT], info.secret_key, info.access_key],
    }


def test_a_gif_result_carries_valid_credentials_of_a_trained_algorithm(signed_gif, store):
    verdict = verify_media(signed_gif["path"], signed_gif["root"])
    credentials = verdict.credentials
    assert credentials.state == VALID and credentials.trusted, credentials.problems
    assert credentials.actions == ["c2pa.created"]
    assert credentials.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert credentials.generator.startswith("Re:Mind ")
    assert credentials.signer == "Re:Mind local content signer"
    assert verdict.watermark.watermarked

    store_json = json.loads(credentials.manifest_json)
    manifest = store_json["manifests"][store_json["active_manifest"]]
    (ingredient,) = manifest["ingredients"]
    template = signed_gif["template"]
    stored = store.get_bytes(TEMPLATES_BUCKET, f"builtin/{template.name.split('/')[1]}.gif")
    assert ingredient["title"] == template.name
    assert ingredient["metadata"][TEMPLATE_LABEL]["sha256"] == hashlib.sha256(stored).hexdigest()
    engines = next(a["data"] for a in manifest["assertions"] if a["label"] == ENGINES_LABEL)
    assert engines == {"engines": dict(signed_gif["job"].result.engines)}


def test_the_signed_gif_still_decodes_every_frame(signed_gif):
    frames = list(video.iter_frames(signed_gif["path"]))
    assert len(frames) == signed_gif["template"].frame_count
    assert len(frames) == signed_gif["job"].result.frames_total


def test_the_manifest_holds_no_personal_data(signed_gif):
    credentials = verify_media(signed_gif["path"]).credentials
    text = credentials.manifest_json
    job_id = signed_gif["job"].name.split("/")[1]
    photo = signed_gif["photo"]
    personal = [
        TENANT,
        job_id,
        photo.name,
        photo.name.split("/")[1],
        photo.sha256,
        "alice",
        *signed_gif["secrets"],
    ]
    for value in personal:
        assert value not in text, value
    assert b"alice" not in signed_gif["path"].read_bytes()


def test_a_changed_byte_is_reported_as_tampered_and_re_encoding_removes_only_the_manifest(
    signed_gif, tmp_path: Path
):
    data = bytearray(signed_gif["path"].read_bytes())
    data[len(data) - 40] ^= 0x01  # inside the last frame's image data
    tampered = tmp_path / "tampered.gif"
    tampered.write_bytes(data)
    credentials = verify_media(tampered, signed_gif["root"]).credentials
    assert credentials.state == TAMPERED
    assert any(problem.endswith("dataHash.mismatch") for problem in credentials.problems)

    reencoded = tmp_path / "reencoded.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(signed_gif["path"]), "-pix_fmt", "yuv420p",
         "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(reencoded)],
        check=True,
    )  # fmt: skip
    verdict = verify_media(reencoded, signed_gif["root"])
    assert verdict.credentials.state == ABSENT
    assert verdict.watermark.watermarked, "the watermark survives what the manifest does not"


def test_the_api_verifies_an_uploaded_file(signed_gif, client: RemindClient, astronaut_png):
    result = client.upload(signed_gif["path"].read_bytes(), "received.gif")
    answer = client.verify(result.name)
    assert answer.credentials.state == media_pb2.CREDENTIALS_STATE_VALID
    assert answer.credentials.trusted
    assert answer.credentials.actions == ["c2pa.created"]
    assert answer.credentials.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert answer.watermark.found and answer.watermark.frames > 10

    photo = client.upload(astronaut_png, "photo.png")
    answer = client.verify(photo.name)
    assert answer.credentials.state == media_pb2.CREDENTIALS_STATE_ABSENT
    assert not answer.watermark.found

    text = client.upload(b"just some text, not media", "notes.txt")
    with pytest.raises(grpc.RpcError) as refused:
        client.verify(text.name)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GIF, MP4" in refused.value.details()


def _plain_gif(path: Path) -> Path:
    """A GIF that Re:Mind never touched."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "1",
         str(path)],
        check=True,
    )  # fmt: skip
    return path


def test_remind_verify_reports_both_marks(signed_gif, stack: LocalStack, tmp_path: Path):
    environment = {**os.environ, "REMIND_STACK_DIR": str(stack.state_dir)}
    command = [sys.executable, "-m", "services.cli", "verify"]
    marked = subprocess.run(
        [*command, str(signed_gif["path"])], capture_output=True, text=True, env=environment
    )
    assert marked.returncode == 0, marked.stderr
    assert "Content Credentials: valid" in marked.stdout and "trusted signer" in marked.stdout
    assert "Watermark: found" in marked.stdout

    plain = _plain_gif(tmp_path / "plain.gif")
    unmarked = subprocess.run(
        [*command, str(plain)], capture_output=True, text=True, env=environment
    )
    assert unmarked.returncode == 1
    assert "Content Credentials: none" in unmarked.stdout
    assert "Watermark: not found" in unmarked.stdout


# ------------------------------------------------------------------------- certificates


def _credentials(tmp_path: Path, **certificate) -> tuple[str, str]:
    authority_key, authority = make_authority()
    key, leaf = issue_signing_certificate(authority_key, authority, **certificate)
    chain, private_key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(pem(leaf) + pem(authority))
    private_key.write_bytes(key_pem(key))
    return str(chain), str(private_key)


BAD_CERTIFICATES = {
    "expired": ({"valid_from_days": -30, "valid_until_days": -1}, "not now"),
    "not yet valid": ({"valid_from_days": 2, "valid_until_days": 30}, "not now"),
    "no digitalSignature": ({"key_usage": ("key_cert_sign",)}, "digitalSignature"),
    "server certificate": (
        {"extended_key_usage": (ExtendedKeyUsageOID.SERVER_AUTH,)},
        "extended key usage",
    ),
    "no extended key usage": ({"extended_key_usage": ()}, "extended key usage"),
    "a CA": ({"is_authority": True}, "end-entity"),
}


@pytest.mark.parametrize("case", BAD_CERTIFICATES)
def test_a_certificate_that_cannot_sign_is_refused_with_its_reason(case, tmp_path: Path):
    certificate, reason = BAD_CERTIFICATES[case]
    with pytest.raises(Misconfigured, match=reason):
        ContentSigner(*_credentials(tmp_path, **certificate))


def test_missing_files_and_foreign_keys_are_refused(tmp_path: Path):
    with pytest.raises(Misconfigured, match="is not set"):
        ContentSigner("", "")
    chain, key = _credentials(tmp_path)
    with pytest.raises(Misconfigured, match="does not exist"):
        ContentSigner(chain, str(tmp_path / "nowhere.pem"))
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = _credentials(other)
    with pytest.raises(Misconfigured, match="does not belong"):
        ContentSigner(chain, other_key)


def test_a_good_certificate_signs_and_the_orchestrator_refuses_to_start_without_one(
    tmp_path: Path,
):
    chain, key = _credentials(tmp_path)
    signer = ContentSigner(chain, key)
    source = _plain_gif(tmp_path / "in.gif")
    provenance = Provenance("templates/t", "image/gif", "0" * 64, {"faceswap": "landmark_warp"})
    signer.sign(source, tmp_path / "out.gif", "image/gif", provenance)
    assert verify_media(tmp_path / "out.gif").credentials.state == VALID

    expired_dir = tmp_path / "expired"
    expired_dir.mkdir()
    expired_chain, expired_key = _credentials(expired_dir, valid_from_days=-30, valid_until_days=-1)
    for chain_file, key_file, reason in (
        ("", "", "is not set"),
        (expired_chain, expired_key, "not now"),
    ):
        started = subprocess.run(
            [sys.executable, "-m", "services.orchestrator.server"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPOSITORY,
            env={
                **os.environ,
                "REMIND_ORCHESTRATOR_PORT": "0",
                "REMIND_ORCHESTRATOR_C2PA_CERTIFICATE_FILE": chain_file,
                "REMIND_ORCHESTRATOR_C2PA_PRIVATE_KEY_FILE": key_file,
            },
        )
        assert started.returncode != 0
        assert "orchestrator cannot start" in started.stderr and reason in started.stderr
        assert "Traceback" not in started.stderr
