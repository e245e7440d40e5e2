"""The local S3 server (SeaweedFS `weed mini`) locked like production: only the S3 port, with
its keys, reads or writes objects.

`weed mini` runs a master, a volume server, a filer and an admin server next to the S3 gateway,
each with an HTTP and a gRPC port. Loopback alone does not protect them: other users of the
machine, and web pages in a local browser, reach 127.0.0.1 too. So:

- HTTP of the master and filer is off (`-disableHttp`); the volume server and filer refuse
  reads and writes without a JWT signed by keys only the process holds (security.toml's
  `jwt.*` keys, given as WEED_JWT_* variables);
- every gRPC port requires a client certificate of the stack's own CA (mutual TLS);
- the Iceberg, Lance, WebDAV and metrics listeners are off;
- the process runs with umask 077 in an owner-only data directory.
"""

import secrets
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from services.shared.signing_certificates import (
    issue_signing_certificate,
    key_pem,
    make_authority,
    pem,
    write_owner_only,
)

# SeaweedFS components that serve or dial gRPC; each reads WEED_GRPC_<NAME>_CERT and _KEY.
GRPC_COMPONENTS = ("MASTER", "VOLUME", "FILER", "S3", "ADMIN", "WORKER", "CLIENT")
# The JWT signing keys of security.toml (`weed scaffold -config=security`).
JWT_KEYS = (
    "WEED_JWT_SIGNING_KEY",
    "WEED_JWT_SIGNING_READ_KEY",
    "WEED_JWT_FILER_SIGNING_KEY",
    "WEED_JWT_FILER_SIGNING_READ_KEY",
)


def new_store_keys() -> dict[str, str]:
    """Random JWT signing keys and an admin password (SeaweedFS needs 16 bytes or more)."""
    return {name: secrets.token_hex(32) for name in (*JWT_KEYS, "WEED_ADMIN_PASSWORD")}


def ensure_store_tls(directory: Path) -> dict[str, str]:
    """The WEED_GRPC_* variables of a CA and one certificate for every component (SeaweedFS
    does not check host names), made on first use, owner-only in `directory`."""
    authority_file, certificate_file, key_file = (
        directory / name for name in ("ca.pem", "store.pem", "store-key.pem")
    )
    if not all(path.is_file() for path in (authority_file, certificate_file, key_file)):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        authority_key, authority = make_authority("Re:Mind local store CA")
        key, certificate = issue_signing_certificate(
            authority_key,
            authority,
            common_name="Re:Mind local store",
            valid_until_days=3650,
            extended_key_usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        )
        write_owner_only(authority_file, pem(authority))
        write_owner_only(certificate_file, pem(certificate))
        write_owner_only(key_file, key_pem(key))
    variables = {"WEED_GRPC_CA": str(authority_file)}
    for component in GRPC_COMPONENTS:
        variables[f"WEED_GRPC_{component}_CERT"] = str(certificate_file)
        variables[f"WEED_GRPC_{component}_KEY"] = str(key_file)
    return variables
