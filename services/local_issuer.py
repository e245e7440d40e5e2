"""The local stack's own identity provider: a signing key, its JWKS, and short-lived tokens for
people of the local tenant (`remind token --user alice`).

In production an app gets its users' tokens from its identity provider (any OIDC issuer);
the orchestrator and the edge only need that issuer's JWKS. Here the stack plays that part
so that the apps and the tests can sign in without one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.shared.signing_certificates import write_owner_only

ISSUER = "https://issuer.remind.local"
AUDIENCE = "remind-app"
KEY_ID = "remind-local-1"
TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class LocalIssuer:
    private_key: Path  # PEM, owner-only
    jwks: Path  # the public key set, for the orchestrator and Envoy
    issuers: Path  # the orchestrator's REMIND_ORCHESTRATOR_TOKEN_ISSUERS_FILE


def local_issuer(directory: Path) -> LocalIssuer:
    return LocalIssuer(
        directory / "signing-key.pem", directory / "jwks.json", directory / "issuers.json"
    )


def ensure_local_issuer(directory: Path, tenant: str) -> LocalIssuer:
    """The issuer's files in `directory`, made on first use: its tokens are people of `tenant`."""
    issuer = local_issuer(directory)
    if not issuer.private_key.is_file():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        write_owner_only(
            issuer.private_key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwks = {"keys": [{**public, "kid": KEY_ID, "alg": "ES256", "use": "sig"}]}
        issuer.jwks.write_text(json.dumps(jwks))
    entry = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "tenant": tenant,
        "jwks_file": str(issuer.jwks),
    }
    issuer.issuers.write_text(json.dumps({"issuers": [entry]}))
    return issuer


def issue_token(directory: Path, subject: str, seconds: int = TOKEN_SECONDS, **claims: Any) -> str:
    """A token for `subject`, valid for `seconds`; `claims` override the standard ones (tests
    make expired, foreign or future tokens with them)."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + seconds}
    payload.update(claims)
    key = local_issuer(directory).private_key.read_bytes()
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": KEY_ID})
