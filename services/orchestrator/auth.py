"""API keys per tenant, checked in one interceptor in front of the public API.

Clients send `authorization: Bearer <api key>`. The server holds only SHA-256 digests of the
keys, in a JSON file: {"tenants": {"acme": ["<sha256 hex>", ...], ...}}. The tenant a key
belongs to scopes every job, upload, template and storage key the call touches.
With no keys file configured, auth is off and every caller is the single configured tenant:
for a developer's own machine only.
"""

import contextvars
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from services.shared import errors
from services.shared.handlers import Continuation, within

log = logging.getLogger(__name__)

# Health and reflection stay open so probes and grpcurl can discover the API.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def current_tenant() -> str:
    """The tenant of the call being served (set by AuthInterceptor)."""
    return _current_tenant.get()


class ApiKeys:
    def __init__(self, tenants: dict[str, list[str]]) -> None:
        self._tenant_by_digest: dict[str, str] = {}
        for tenant, digests in tenants.items():
            if not _TENANT.match(tenant):
                raise ValueError(f"tenant name {tenant!r} must be lower-case letters, digits, -")
            for digest in digests:
                self._tenant_by_digest[digest.lower()] = tenant

    @classmethod
    def from_file(cls, path: Path) -> "ApiKeys":
        return cls(json.loads(path.read_text())["tenants"])

    def tenant_for(self, api_key: str) -> str | None:
        digest = key_digest(api_key)
        for known, tenant in self._tenant_by_digest.items():
            if hmac.compare_digest(known, digest):
                return tenant
        return None


def _bearer_key(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise errors.Unauthenticated("The authorization header must be 'Bearer <api key>'.")
    raise errors.Unauthenticated("Missing credentials: send 'authorization: Bearer <api key>'.")


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, keys: ApiKeys | None, open_tenant: str) -> None:
        self.keys = keys
        self.open_tenant = open_tenant
        if keys is None:
            log.warning("no API keys configured: every caller is tenant %r", open_tenant)

    def _tenant(self, context: grpc.ServicerContext) -> str:
        if self.keys is None:
            return self.open_tenant
        tenant = self.keys.tenant_for(_bearer_key(context.invocation_metadata()))
        if tenant is None:
            raise errors.Unauthenticated("The API key is not valid.")
        return tenant

    @contextmanager
    def _authenticated(self, context: grpc.ServicerContext) -> Iterator[None]:
        token = _current_tenant.set(self._tenant(context))
        try:
            yield
        finally:
            _current_tenant.reset(token)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler_call_details.method.lstrip("/").startswith(OPEN_SERVICES):
            return handler
        return within(handler, self._authenticated)
