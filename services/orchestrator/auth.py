"""Who is calling: a person with a token from their tenant's identity provider, or a tenant's
server with an API key. Checked in one interceptor in front of the public API.

- People (the mobile and web apps) send `authorization: Bearer <JWT>`: a short-lived token of
  an OIDC-style issuer, ES256 or RS256, with issuer, audience, subject and expiry. Settings map
  each (issuer, audience) to a tenant and name the issuer's keys (a JWKS file or URL). The edge
  (Envoy's jwt_authn) checks the same tokens first; this check holds for calls that bypass it.
- Servers send `x-api-key: <key>`. The server holds only SHA-256 digests of the keys
  ({"tenants": {"acme": ["<sha256 hex>", ...]}}). A key acts for its whole tenant: as the
  tenant itself, or for one person of it named in `x-remind-subject`.

The caller is an Owner: every job, upload, result, template and listing is scoped by it, and
storage keys start with its scope: `{tenant}` for the tenant itself,
`{tenant}/people/{hash of the subject}` for a person (no personal data in keys). With no keys
and no issuers configured, auth is off and every caller is the configured tenant: for a
developer's own machine only.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt

from services.shared import errors
from services.shared.handlers import Continuation, within

log = logging.getLogger(__name__)

# Health and reflection stay open so probes and grpcurl can discover the API.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
API_KEY_HEADER = "x-api-key"
SUBJECT_HEADER = "x-remind-subject"
# Asymmetric only: a token signed with a shared secret, or unsigned (alg "none"), is refused.
TOKEN_ALGORITHMS = ("ES256", "RS256")
CLOCK_SKEW_SECONDS = 30
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_SUBJECT_LENGTH = 255
_current_owner: contextvars.ContextVar[Owner] = contextvars.ContextVar("owner")


@dataclass(frozen=True)
class Owner:
    """Whose things a call may see: a tenant, or one person (subject) of it."""

    tenant: str
    subject: str = ""

    @property
    def scope(self) -> str:
        """The prefix of every storage key this owner's things live under."""
        if not self.subject:
            return self.tenant
        digest = hashlib.sha256(f"{self.tenant}/{self.subject}".encode()).hexdigest()[:32]
        return f"{self.tenant}/people/{digest}"

    @property
    def is_person(self) -> bool:
        return bool(self.subject)


def current_owner() -> Owner:
    """The owner of the call being served (set by AuthInterceptor)."""
    return _current_owner.get()


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, tenants: dict[str, list[str]]) -> None:
        self._tenant_by_digest: dict[str, str] = {}
        for tenant, digests in tenants.items():
            _check_tenant(tenant)
            for digest in digests:
                self._tenant_by_digest[digest.lower()] = tenant

    @classmethod
    def from_file(cls, path: Path) -> ApiKeys:
        return cls(json.loads(path.read_text())["tenants"])

    def tenant_for(self, api_key: str) -> str | None:
        digest = key_digest(api_key)
        for known, tenant in self._tenant_by_digest.items():
            if hmac.compare_digest(known, digest):
                return tenant
        return None


@dataclass(frozen=True)
class Issuer:
    """An identity provider whose tokens, for this audience, are people of this tenant."""

    issuer: str
    audience: str
    tenant: str
    keys: jwt.PyJWKSet | jwt.PyJWKClient


class TokenIssuers:
    """The issuers settings trust: {"issuers": [{"issuer", "audience", "tenant",
    "jwks_file" or "jwks_url"}]}."""

    def __init__(self, issuers: Sequence[Issuer]) -> None:
        self._issuers = {(issuer.issuer, issuer.audience): issuer for issuer in issuers}

    @classmethod
    def from_file(cls, path: Path) -> TokenIssuers:
        issuers = []
        for entry in json.loads(path.read_text())["issuers"]:
            _check_tenant(entry["tenant"])
            if "jwks_file" in entry:
                keys: jwt.PyJWKSet | jwt.PyJWKClient = jwt.PyJWKSet.from_json(
                    Path(entry["jwks_file"]).read_text()
                )
            else:
                keys = jwt.PyJWKClient(entry["jwks_url"], cache_keys=True, lifespan=300)
            issuers.append(Issuer(entry["issuer"], entry["audience"], entry["tenant"], keys))
        return cls(issuers)

    def owner_for(self, token: str) -> Owner:
        """The person a token names; Unauthenticated saying what is wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise errors.Unauthenticated(
                "The token is not a JWT (header.payload.signature)."
            ) from None
        claimed = claims.get("aud")
        audiences = [claimed] if isinstance(claimed, str) else list(claimed or [])
        name = str(claims.get("iss", ""))
        issuer = next(
            (self._issuers[(name, aud)] for aud in audiences if (name, aud) in self._issuers),
            None,
        )
        if issuer is None:
            raise errors.Unauthenticated(
                "The token's issuer and audience are not ones this API trusts."
            )
        if header.get("alg") not in TOKEN_ALGORITHMS:
            raise errors.Unauthenticated(
                f"Tokens must be signed with {' or '.join(TOKEN_ALGORITHMS)}, "
                f"not {header.get('alg')!r}."
            )
        try:
            key = _signing_key(issuer.keys, token, header)
            verified = jwt.decode(
                token,
                key,
                algorithms=list(TOKEN_ALGORITHMS),
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated("The token has expired: sign in again.") from None
        except jwt.ImmatureSignatureError:
            raise errors.Unauthenticated("The token is not valid yet.") from None
        except jwt.PyJWTError as error:
            raise errors.Unauthenticated(f"The token is not valid: {error}.") from None
        return Owner(issuer.tenant, _checked_subject(str(verified["sub"])))


def _signing_key(keys: jwt.PyJWKSet | jwt.PyJWKClient, token: str, header: dict) -> Any:
    if isinstance(keys, jwt.PyJWKClient):
        return keys.get_signing_key_from_jwt(token).key
    key_id = header.get("kid")
    for candidate in keys.keys:
        if key_id is None or candidate.key_id == key_id:
            return candidate.key
    raise errors.Unauthenticated("The token is signed with a key this API does not know.")


def _check_tenant(tenant: str) -> None:
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant name {tenant!r} must be lower-case letters, digits, -")


def _checked_subject(subject: str) -> str:
    if not subject or len(subject) > MAX_SUBJECT_LENGTH or not subject.isprintable():
        raise errors.Unauthenticated(
            f"The subject must be 1 to {MAX_SUBJECT_LENGTH} printable characters."
        )
    return subject


def _header(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return str(value)
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(
        self, keys: ApiKeys | None, issuers: TokenIssuers | None, open_tenant: str
    ) -> None:
        self.keys = keys
        self.issuers = issuers
        self.open_tenant = open_tenant
        if keys is None and issuers is None:
            log.warning("no API keys or token issuers configured: every caller is %r", open_tenant)

    def owner(self, context: grpc.ServicerContext) -> Owner:
        metadata = context.invocation_metadata()
        if self.keys is None and self.issuers is None:
            return Owner(self.open_tenant)
        authorization = _header(metadata, "authorization")
        api_key = _header(metadata, API_KEY_HEADER)
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated("The authorization header must be 'Bearer <token>'.")
            if self.issuers is None:
                raise errors.Unauthenticated("This API takes no user tokens: send x-api-key.")
            return self.issuers.owner_for(token.strip())
        if api_key is not None:
            tenant = self.keys.tenant_for(api_key) if self.keys else None
            if tenant is None:
                raise errors.Unauthenticated("The API key is not valid.")
            subject = _header(metadata, SUBJECT_HEADER)
            return Owner(tenant, _checked_subject(subject) if subject is not None else "")
        raise errors.Unauthenticated(
            "Missing credentials: send 'authorization: Bearer <token>' (people) or "
            "'x-api-key: <key>' (servers)."
        )

    @contextmanager
    def _authenticated(self, context: grpc.ServicerContext) -> Iterator[None]:
        token = _current_owner.set(self.owner(context))
        try:
            yield
        finally:
            _current_owner.reset(token)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler_call_details.method.lstrip("/").startswith(OPEN_SERVICES):
            return handler
        return within(handler, self._authenticated)
