"""Storage grants: the orchestrator's short-lived, signed permission to read or write one object.

A model service reads and writes the store with credentials that reach every tenant's
objects, so a bucket and key in a request must not be enough: anyone who can reach the service
would make it a confused deputy. The orchestrator, which knows whose object is whose, signs a
`StorageGrant` for one bucket+key, one verb and a short lifetime; the model service checks it
before it touches the store.

Ed25519 rather than a shared HMAC secret: model services hold only the public key, so no model
service (nor a leak of its settings) can mint grants; only the orchestrator's private key can.
Keys travel as base64 of their 32 raw bytes, which fits an environment variable or a Secret.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError
from remind.v1 import media_pb2

from services.shared.errors import Misconfigured, PermissionDenied

READ = media_pb2.STORAGE_VERB_READ
WRITE = media_pb2.STORAGE_VERB_WRITE
VERB_NAMES = {READ: "reading", WRITE: "writing"}
RAW = serialization.Encoding.Raw


def new_grant_keys() -> tuple[str, str]:
    """A fresh (private, public) key pair, each base64 of its raw 32 bytes."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(
        RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)
    return base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode()


def _raw_key(encoded: str, setting: str) -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise Misconfigured(
            f"{setting} must be base64 of a 32-byte Ed25519 key (see services/stack.py); "
            f"got {len(encoded)} characters."
        )
    return raw


class GrantSigner:
    """Mints grants; only the orchestrator holds one."""

    def __init__(
        self, private_key: str, lifetime_seconds: float, setting: str = "the grant signing key"
    ) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(_raw_key(private_key, setting))
        self.lifetime_seconds = lifetime_seconds

    def grant(
        self, target: media_pb2.StorageObject, verb: media_pb2.StorageVerb
    ) -> media_pb2.StorageGrant:
        claims = media_pb2.StorageGrantClaims(
            bucket=target.bucket,
            key=target.key,
            verb=verb,
            expires_unix_seconds=int(time.time() + self.lifetime_seconds),
        ).SerializeToString()
        return media_pb2.StorageGrant(claims=claims, signature=self.key.sign(claims))


class GrantChecker:
    """Checks a grant against the object a request names; PermissionDenied unless it holds."""

    def __init__(
        self,
        public_key: str,
        setting: str = "the grant verify key",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = Ed25519PublicKey.from_public_bytes(_raw_key(public_key, setting))
        self.clock = clock

    def check(
        self,
        target: media_pb2.StorageObject,
        grant: media_pb2.StorageGrant,
        verb: media_pb2.StorageVerb,
    ) -> None:
        where = f"{target.bucket}/{target.key}"
        doing = VERB_NAMES[verb]
        if not grant.claims:
            raise PermissionDenied(
                f"{doing.capitalize()} {where} needs a storage grant from the orchestrator; "
                "model services do not act on a bare bucket and key."
            )
        try:
            self.key.verify(grant.signature, grant.claims)
            claims = media_pb2.StorageGrantClaims.FromString(grant.claims)
        except (InvalidSignature, DecodeError):
            raise PermissionDenied(
                f"The storage grant for {where} is not signed by the orchestrator's grant key."
            ) from None
        if (claims.bucket, claims.key) != (target.bucket, target.key):
            raise PermissionDenied(
                f"The storage grant is for {claims.bucket}/{claims.key}, not {where}."
            )
        if claims.verb != verb:
            raise PermissionDenied(
                f"The storage grant for {where} allows {VERB_NAMES.get(claims.verb, 'nothing')}, "
                f"not {doing}."
            )
        late = self.clock() - claims.expires_unix_seconds
        if late > 0:
            raise PermissionDenied(
                f"The storage grant for {where} expired {late:.0f} s ago: ask the orchestrator "
                "for a new one."
            )
