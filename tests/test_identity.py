"""People, not only tenants: each person's things are theirs alone, through the edge (Envoy's
jwt_authn) and directly; bad tokens are refused; a person can delete everything of theirs."""

import time
from collections.abc import Callable, Iterator

import grpc
import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from remind.v1 import job_service_pb2 as jobs_pb2
from remind.v1 import media_service_pb2 as media_pb2
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.local_issuer import AUDIENCE, ISSUER, KEY_ID, issue_token
from services.orchestrator.auth import Owner
from services.shared import images
from services.shared.storage import ObjectStore
from services.stack import LocalStack, StackInfo

BUCKETS = ("remind-uploads", "remind-results", "remind-templates", "remind-records")
PATHS = ("direct", "edge")


def _address(info: StackInfo, path: str) -> str:
    return info.orchestrator_address if path == "direct" else info.edge_url.removeprefix("http://")


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


@pytest.fixture(scope="module")
def alices_job(stack: LocalStack, user_photo: np.ndarray) -> dict:
    """Alice's upload and finished GIF job, made with her token."""
    info = stack.info()
    with RemindClient(info.orchestrator_address, token=stack.token("alice")) as alice:
        photo = alice.upload(images.encode_image(user_photo, "png"), "alice.png")
        template = alice.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0]
        job = alice.create_gif_job(photo.name, template.name)
        final = list(alice.watch(job.name))[-1]
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
    return {"photo": photo, "job": final, "template": template}


@pytest.mark.parametrize("path", PATHS)
def test_a_person_sees_only_their_own_things(stack: LocalStack, alices_job, path: str):
    info = stack.info()
    address = _address(info, path)
    job, photo = alices_job["job"], alices_job["photo"]
    with RemindClient(address, token=stack.token("alice")) as alice:
        assert alice.get_job(job.name).state == jobs_pb2.JOB_STATE_SUCCEEDED
        assert job.name in [listed.name for listed in alice.list_jobs(200)]
        assert len(alice.download(job.result.media)) == job.result.size_bytes

    with RemindClient(address, token=stack.token("bob")) as bob:
        assert job.name not in [listed.name for listed in bob.list_jobs(200)]
        denied = {
            "get": lambda: bob.get_job(job.name),
            "watch": lambda: list(bob.watch(job.name)),
            "cancel": lambda: bob.jobs.CancelJob(jobs_pb2.CancelJobRequest(name=job.name)),
            "delete job": lambda: bob.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(name=job.name)),
            "download": lambda: bob.download(job.result.media),
            "presign": lambda: bob.media.GetMediaUrl(
                media_pb2.GetMediaUrlRequest(name=job.result.media)
            ),
            "verify": lambda: bob.verify(job.result.media),
            "delete media": lambda: bob.media.DeleteMedia(
                media_pb2.DeleteMediaRequest(name=photo.name)
            ),
            "reuse the photo": lambda: bob.create_gif_job(photo.name, alices_job["template"].name),
        }
        for what, call in denied.items():
            assert _code(call) == grpc.StatusCode.NOT_FOUND, what
        # The same answer as for things that never existed.
        missing = "jobs/" + "0" * 32
        assert _code(lambda: bob.get_job(missing)) == grpc.StatusCode.NOT_FOUND


def test_an_api_key_acts_for_the_tenant_or_for_a_person_it_names(stack: LocalStack, alices_job):
    info = stack.info()
    job = alices_job["job"]
    key = info.api_keys["local"]
    with RemindClient(info.orchestrator_address, api_key=key) as tenant:
        assert job.name not in [listed.name for listed in tenant.list_jobs(200)]
        assert _code(lambda: tenant.get_job(job.name)) == grpc.StatusCode.NOT_FOUND
    with RemindClient(info.orchestrator_address, api_key=key, subject="alice") as for_alice:
        assert for_alice.get_job(job.name).name == job.name
    with RemindClient(info.orchestrator_address, api_key=info.api_keys["acme"]) as acme:
        assert _code(lambda: acme.get_job(job.name)) == grpc.StatusCode.NOT_FOUND
    with RemindClient(
        info.orchestrator_address, api_key=info.api_keys["acme"], subject="alice"
    ) as acme_alice:
        # Another tenant's "alice" is another person.
        assert _code(lambda: acme_alice.get_job(job.name)) == grpc.StatusCode.NOT_FOUND


def _foreign_key_token(**claims: object) -> str:
    """Signed by a key the issuer never published, under the issuer's own key id."""
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600, **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": KEY_ID})


def _bad_tokens(stack: LocalStack) -> Iterator[tuple[str, str, str]]:
    """(what, token, a word the refusal must say)."""
    identity = stack.identity_dir
    now = int(time.time())
    yield "expired", issue_token(identity, "alice", seconds=-600), "expire"
    yield "not yet valid", issue_token(identity, "alice", nbf=now + 600), ""
    yield "wrong audience", issue_token(identity, "alice", aud="another-app"), ""
    yield "wrong issuer", issue_token(identity, "alice", iss="https://evil.example"), ""
    unsigned = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 600},
        key=None,
        algorithm="none",
    )
    yield "unsigned (alg none)", unsigned, ""
    header, payload, signature = issue_token(identity, "alice").split(".")
    bob = issue_token(identity, "bob").split(".")[1]
    yield "tampered (subject swapped)", f"{header}.{bob}.{signature}", ""
    yield "wrongly keyed", _foreign_key_token(), ""
    yield "not a JWT", "rmk_an-api-key-in-the-wrong-header", ""


@pytest.mark.parametrize("path", PATHS)
def test_bad_tokens_are_unauthenticated_with_a_reason(stack: LocalStack, path: str):
    address = _address(stack.info(), path)
    for what, token, word in _bad_tokens(stack):
        with RemindClient(address, token=token) as caller:
            with pytest.raises(grpc.RpcError) as refused:
                caller.list_jobs()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
        assert refused.value.details(), what
        assert word in refused.value.details().lower(), (what, refused.value.details())


def test_deleting_everything_of_mine_leaves_nothing_of_mine_and_all_of_the_others(
    stack: LocalStack, store: ObjectStore, user_photo: np.ndarray
):
    info = stack.info()
    with (
        RemindClient(info.orchestrator_address, token=stack.token("carol")) as carol,
        RemindClient(info.orchestrator_address, token=stack.token("dave")) as dave,
    ):
        photo = images.encode_image(user_photo, "png")
        template = carol.list_templates(templates_pb2.TEMPLATE_KIND_GIF)[0].name
        carols = carol.upload(photo, "carol.png")
        job = carol.create_gif_job(carols.name, template)
        final = list(carol.watch(job.name))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED
        carol.upload(b"a voice, kept apart", "voice.wav")
        daves = dave.upload(photo, "dave.png")

        scope = Owner("local", "carol").scope
        before = sum(len(store.list_keys(bucket, f"{scope}/")) for bucket in BUCKETS)
        assert before >= 6  # two uploads and their records, the result and its record, the job

        erased = carol.delete_my_data()
        assert erased.jobs_deleted == 1 and erased.objects_deleted == before
        for bucket in BUCKETS:
            assert store.list_keys(bucket, f"{scope}/") == [], bucket
        assert _code(lambda: carol.get_job(job.name)) == grpc.StatusCode.NOT_FOUND
        assert carol.list_jobs() == []
        assert _code(lambda: carol.download(final.result.media)) == grpc.StatusCode.NOT_FOUND
        # Dave's things are untouched.
        assert len(dave.download(daves.name)) == len(photo)


def test_a_person_deletes_one_job_or_one_upload(stack: LocalStack, store, alices_job, user_photo):
    info = stack.info()
    with RemindClient(info.orchestrator_address, token=stack.token("erin")) as erin:
        photo = erin.upload(images.encode_image(user_photo, "png"), "erin.png")
        job = erin.create_gif_job(photo.name, alices_job["template"].name)
        # Just created, so not ended: it must be cancelled or finish first.
        refused = _code(lambda: erin.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(name=job.name)))
        assert refused == grpc.StatusCode.FAILED_PRECONDITION
        final = list(erin.watch(job.name))[-1]
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error.message
        erin.jobs.DeleteJob(jobs_pb2.DeleteJobRequest(name=job.name))
        assert _code(lambda: erin.get_job(job.name)) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: erin.download(final.result.media)) == grpc.StatusCode.NOT_FOUND
        scope = Owner("local", "erin").scope
        job_id = job.name.split("/")[1]
        assert store.list_keys("remind-results", f"{scope}/{job_id}/") == []

        erin.media.DeleteMedia(media_pb2.DeleteMediaRequest(name=photo.name))
        assert _code(lambda: erin.download(photo.name)) == grpc.StatusCode.NOT_FOUND
        assert store.list_keys("remind-uploads", f"{scope}/") == []
