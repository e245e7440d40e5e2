"""A local certificate authority and Content Credentials signing certificate, for the local
stack and the tests. Production mounts a certificate from a real CA instead (see deploy/).

The signing certificate follows the C2PA certificate profile as the c2pa SDK checks it: an
ES256 (P-256) end-entity certificate (CA:FALSE) with the digitalSignature key usage, the
emailProtection and C2PA claim-signing extended key usages, and Subject and Authority Key
Identifiers. The knobs exist so that tests can issue the certificates the SDK must refuse.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

# C2PA 2.1, 14.5.1: the claim-signing extended key usage.
C2PA_CLAIM_SIGNING = ObjectIdentifier("1.3.6.1.4.1.62558.2.1")
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
SIGNING_USAGES = (ExtendedKeyUsageOID.EMAIL_PROTECTION, C2PA_CLAIM_SIGNING)
ORGANISATION = "Re:Mind (local)"


@dataclass(frozen=True)
class LocalCredentials:
    certificate_chain: Path  # PEM: the signing certificate, then the CA's
    private_key: Path  # PEM, PKCS#8
    root: Path  # PEM: the CA, the trust anchor verifiers need


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        ]
    )


def make_authority(
    common_name: str = "Re:Mind local root CA",
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(("key_cert_sign", "crl_sign")), critical=True)
        .add_extension(identifier, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(identifier),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue_signing_certificate(
    authority_key: ec.EllipticCurvePrivateKey,
    authority: x509.Certificate,
    common_name: str = "Re:Mind local content signer",
    valid_from_days: float = -1,
    valid_until_days: float = 825,
    key_usage: Sequence[str] = ("digital_signature",),
    extended_key_usage: Sequence[ObjectIdentifier] = SIGNING_USAGES,
    is_authority: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A signing key and its certificate, valid from/until that many days from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_from_days))
        .not_valid_after(now + datetime.timedelta(days=valid_until_days))
        .add_extension(x509.BasicConstraints(ca=is_authority, path_length=None), critical=True)
        .add_extension(_key_usage(key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()),
            critical=False,
        )
    )
    if extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False
        )
    return key, builder.sign(authority_key, hashes.SHA256())


def _key_usage(usages: Sequence[str]) -> x509.KeyUsage:
    flags = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
    )  # fmt: skip
    return x509.KeyUsage(**{flag: flag in usages for flag in flags})


def write_owner_only(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_bytes(data)


def local_credentials(directory: Path) -> LocalCredentials:
    """Where the local CA and signing certificate are kept in `directory`."""
    return LocalCredentials(
        directory / "signing-chain.pem", directory / "signing-key.pem", directory / "root-ca.pem"
    )


def ensure_local_credentials(directory: Path) -> LocalCredentials:
    """The local CA and signing certificate in `directory` (owner-only), made on first use."""
    credentials = local_credentials(directory)
    if all(path.is_file() for path in vars(credentials).values()):
        return credentials
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    authority_key, authority = make_authority()
    key, certificate = issue_signing_certificate(authority_key, authority)
    write_owner_only(credentials.private_key, key_pem(key))
    write_owner_only(credentials.certificate_chain, pem(certificate) + pem(authority))
    write_owner_only(credentials.root, pem(authority))
    return credentials
