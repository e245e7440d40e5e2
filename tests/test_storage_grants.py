"""A model service is no confused deputy: reaching it is not enough to read or write the store.

The stack's voice service (a real process) is called directly over gRPC, as any pod that can
reach it could, with another tenant's object and every way a grant can be missing or wrong.
"""

import io
import time

import grpc
import pytest
from remind.v1 import media_pb2, voice_pb2, voice_pb2_grpc

from services.samples import make_mix, wav_bytes
from services.shared.storage_grants import READ, GrantSigner, new_grant_keys

UPLOADS = "remind-uploads"
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def voice(stack_info):
    with grpc.insecure_channel(stack_info.voice_address) as channel:
        yield voice_pb2_grpc.VoiceServiceStub(channel)


@pytest.fixture(scope="module")
def orchestrator_grants(stack_info) -> GrantSigner:
    return GrantSigner(stack_info.grant_signing_key, 60)


@pytest.fixture(scope="module")
def acme_recording(store) -> media_pb2.StorageObject:
    """A recording another tenant uploaded, where the orchestrator keeps uploads."""
    store.ensure_buckets(UPLOADS)
    key = f"acme/grant-test-{time.time_ns()}.wav"
    data = wav_bytes(make_mix("en-us", 1.0).mixture)
    store.put_new(UPLOADS, key, io.BytesIO(data), len(data))
    return media_pb2.StorageObject(bucket=UPLOADS, key=key)


def _probe(voice, target, grant=None) -> voice_pb2.ProbeAudioResponse:
    return voice.ProbeAudio(
        voice_pb2.ProbeAudioRequest(object=target, object_grant=grant), timeout=30
    )


def _denied(call) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == DENIED, caught.value.details()
    return caught.value.details()


def test_a_recording_is_read_with_the_orchestrators_grant(
    voice, acme_recording, orchestrator_grants
):
    probe = _probe(voice, acme_recording, orchestrator_grants.grant(acme_recording, READ))
    assert abs(probe.duration_seconds - 1.0) < 0.1


def test_another_tenants_recording_without_a_grant_is_denied(voice, acme_recording):
    assert "needs a storage grant" in _denied(lambda: _probe(voice, acme_recording))


def test_a_grant_signed_by_any_other_key_is_denied(voice, acme_recording):
    forger = GrantSigner(new_grant_keys()[0], 60)
    details = _denied(lambda: _probe(voice, acme_recording, forger.grant(acme_recording, READ)))
    assert "not signed by the orchestrator" in details


def test_a_grant_whose_claims_were_edited_is_denied(voice, acme_recording, orchestrator_grants):
    mine = media_pb2.StorageObject(bucket=UPLOADS, key="local/mine.wav")
    grant = orchestrator_grants.grant(mine, READ)
    claims = media_pb2.StorageGrantClaims.FromString(grant.claims)
    claims.key = acme_recording.key
    edited = media_pb2.StorageGrant(claims=claims.SerializeToString(), signature=grant.signature)
    assert "not signed by the orchestrator" in _denied(
        lambda: _probe(voice, acme_recording, edited)
    )


def test_an_expired_grant_is_denied(voice, stack_info, acme_recording):
    expired = GrantSigner(stack_info.grant_signing_key, -5).grant(acme_recording, READ)
    assert "expired" in _denied(lambda: _probe(voice, acme_recording, expired))


def test_a_grant_for_another_key_is_denied(voice, acme_recording, orchestrator_grants):
    mine = media_pb2.StorageObject(bucket=UPLOADS, key="local/mine.wav")
    details = _denied(lambda: _probe(voice, acme_recording, orchestrator_grants.grant(mine, READ)))
    assert f"not {UPLOADS}/{acme_recording.key}" in details


def test_a_separation_source_needs_its_own_grant(voice, acme_recording, orchestrator_grants):
    mine = media_pb2.StorageObject(bucket=UPLOADS, key="local/mine.wav")
    config = voice_pb2.SeparationConfig(
        source=acme_recording, source_grant=orchestrator_grants.grant(mine, READ)
    )
    request = voice_pb2.SeparateVoiceRequest(config=config)
    _denied(lambda: list(voice.SeparateVoice(iter([request]), timeout=60)))


def test_a_read_grant_does_not_let_anyone_write(voice, store, acme_recording, orchestrator_grants):
    """Stems stored over another tenant's prefix with a grant meant only for reading it."""
    prefix = media_pb2.StorageObject(bucket=UPLOADS, key=f"acme/stems-{time.time_ns()}")
    stem_chunk = media_pb2.AudioChunk(data=wav_bytes(make_mix("en-us", 1.0).mixture))
    for wrong in (orchestrator_grants.grant(prefix, READ), None):
        config = voice_pb2.SeparationConfig(
            engine="spectral", store_prefix=prefix, store_prefix_grant=wrong
        )
        requests = [
            voice_pb2.SeparateVoiceRequest(config=config),
            voice_pb2.SeparateVoiceRequest(chunk=stem_chunk),
        ]
        details = _denied(lambda calls=requests: list(voice.SeparateVoice(iter(calls), timeout=60)))
        assert ("allows reading, not writing" if wrong else "needs a storage grant") in details
    assert store.list_keys(UPLOADS, prefix.key) == []
