"""Content Credentials (C2PA): every result is signed as made by a trained algorithm, and anyone
can read the claim back.

A result's manifest says: action `c2pa.created` with IPTC digital source type
`trainedAlgorithmicMedia`, software Re:Mind and its version, the engines used, and the template
as an ingredient described by its name and SHA-256 (its bytes are not embedded). It carries
no personal data: no photo, no voice, no tenant, job or key.

Signing uses the c2pa SDK (`c2pa-python`) with an ES256 certificate chain and key from files.
The certificate is checked before first use, so a wrong one stops the service at start with a
reason a person can act on (the SDK's own refusal is only "the certificate is invalid"), and
one test signature proves the SDK accepts it. Thumbnails are off: they add a second and 100 KB
to a GIF and show nothing the file itself does not.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.shared.errors import InvalidInput, Misconfigured
from services.shared.signing_certificates import C2PA_CLAIM_SIGNING, DOCUMENT_SIGNING

log = logging.getLogger(__name__)

SOFTWARE = "Re:Mind"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ENGINES_LABEL = "org.remind.engines"
TEMPLATE_LABEL = "org.remind.template"
TEMPLATE_INGREDIENT = "remind:template"
# The extended key usages the C2PA certificate profile allows for claim signing; the SDK
# accepts emailProtection by default and the others once listed in its trust settings.
SIGNING_USAGES = (ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING, C2PA_CLAIM_SIGNING)
TRUST_CONFIG = "".join(f"{usage.dotted_string}\n" for usage in SIGNING_USAGES)
EXPIRY_WARNING_DAYS = 30
# The smallest GIF there is (1x1), for the test signature at start-up.
_PROBE_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)


def software_version() -> str:
    try:
        return metadata.version("remind")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """What a result's manifest says besides "made by Re:Mind": the template and the engines."""

    template_name: str  # "templates/astronaut-sway"
    template_format: str  # its content type
    template_sha256: str
    engines: dict[str, str]  # by stage: {"faceswap": "landmark_warp"}


def manifest_for(provenance: Provenance, content_type: str) -> dict[str, Any]:
    version = software_version()
    return {
        "claim_generator_info": [{"name": SOFTWARE, "version": version}],
        "title": f"{SOFTWARE} result",
        "format": content_type,
        "assertions": [
            {
                "label": "c2pa.actions",
                "created": True,
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": {"name": SOFTWARE, "version": version},
                            "parameters": {"ingredientIds": [TEMPLATE_INGREDIENT]},
                        }
                    ]
                },
            },
            {"label": ENGINES_LABEL, "created": True, "data": {"engines": provenance.engines}},
        ],
        # Described, not embedded; the SDK drops an ingredient's own hash field, so the
        # template's SHA-256 travels in its metadata.
        "ingredients": [
            {
                "title": provenance.template_name,
                "format": provenance.template_format,
                "relationship": "componentOf",
                "instance_id": TEMPLATE_INGREDIENT,
                "metadata": {TEMPLATE_LABEL: {"sha256": provenance.template_sha256}},
            }
        ],
    }


class ContentSigner:
    """Signs result files; one per process, shared by every job (the SDK's signer is
    thread-safe; a builder is made per file)."""

    def __init__(self, certificate_chain: str, private_key: str, timestamp_url: str = "") -> None:
        chain_pem, key_pem = _checked_credentials(certificate_chain, private_key)
        self.chain_pem = chain_pem
        info = c2pa.C2paSignerInfo(
            c2pa.C2paSigningAlg.ES256, chain_pem, key_pem, timestamp_url or None
        )
        self._signer = c2pa.Signer.from_info(info)
        self._context = c2pa.Context.from_dict(
            {
                "builder": {"thumbnail": {"enabled": False}},
                "verify": {"remote_manifest_fetch": False},
                "trust": {"trust_config": TRUST_CONFIG},
            }
        )
        self._prove_the_sdk_accepts_it(certificate_chain)

    def root_pem(self) -> str:
        """The last certificate of the signing chain, which verifiers should trust."""
        last = x509.load_pem_x509_certificates(self.chain_pem)[-1]
        return last.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, source: Path, target: Path, content_type: str, provenance: Provenance) -> None:
        """Writes `source` with a signed manifest to `target`."""
        with (
            c2pa.Builder(manifest_for(provenance, content_type), context=self._context) as builder,
            open(source, "rb") as unsigned,
            open(target, "wb") as signed,
        ):
            builder.sign(self._signer, content_type, unsigned, signed)

    def _prove_the_sdk_accepts_it(self, certificate_chain: str) -> None:
        provenance = Provenance("templates/start-up-check", "image/gif", "0" * 64, {})
        manifest = manifest_for(provenance, "image/gif")
        try:
            with c2pa.Builder(manifest, context=self._context) as builder:
                builder.sign(self._signer, "image/gif", io.BytesIO(_PROBE_GIF), io.BytesIO())
        except c2pa.C2paError as error:
            raise Misconfigured(
                f"The Content Credentials certificate {certificate_chain} is refused by the "
                f"C2PA SDK: {error}"
            ) from None


def _checked_credentials(chain_file: str, key_file: str) -> tuple[bytes, bytes]:
    """The chain and the key as the SDK wants them (PEM, the key as PKCS#8), after the checks
    of the C2PA certificate profile that the SDK would refuse without saying which failed."""
    for name, what in ((chain_file, "certificate chain"), (key_file, "private key")):
        if not name or not Path(name).is_file():
            where = f"{name} does not exist" if name else "is not set"
            raise Misconfigured(
                f"The Content Credentials {what} {where}: results are never stored unsigned. "
                "Set REMIND_ORCHESTRATOR_C2PA_CERTIFICATE_FILE and "
                "REMIND_ORCHESTRATOR_C2PA_PRIVATE_KEY_FILE (`make up` makes local ones)."
            )
    certificate_chain, private_key = Path(chain_file), Path(key_file)
    try:
        chain = x509.load_pem_x509_certificates(certificate_chain.read_bytes())
    except ValueError as error:
        raise Misconfigured(
            f"{certificate_chain} is not a PEM certificate chain: {error}"
        ) from None
    try:
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise Misconfigured(
            f"{private_key} is not an unencrypted PEM private key: {error}"
        ) from None
    leaf = chain[0]
    problems = _profile_problems(leaf, key)
    if problems:
        raise Misconfigured(
            f"The Content Credentials certificate {certificate_chain} cannot sign: "
            + "; ".join(problems)
            + "."
        )
    days_left = (leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    if days_left < EXPIRY_WARNING_DAYS:
        log.warning("the Content Credentials certificate expires in %d days: renew it", days_left)
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain_pem, key_pem


def _profile_problems(leaf: x509.Certificate, key: Any) -> list[str]:
    problems = []
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        problems.append(
            f"it is valid from {leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        problems.append("the key must be an ECDSA P-256 key (ES256)")
    elif key.public_key() != leaf.public_key():
        problems.append("the private key does not belong to the first certificate of the chain")
    extensions = {extension.oid: extension.value for extension in leaf.extensions}
    constraints = extensions.get(x509.oid.ExtensionOID.BASIC_CONSTRAINTS)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        problems.append("it is a CA certificate; signing needs an end-entity certificate")
    usage = extensions.get(x509.oid.ExtensionOID.KEY_USAGE)
    if not isinstance(usage, x509.KeyUsage) or not usage.digital_signature:
        problems.append("its key usage must include digitalSignature")
    extended = extensions.get(x509.oid.ExtensionOID.EXTENDED_KEY_USAGE)
    allowed = {usage.dotted_string for usage in SIGNING_USAGES}
    present = {oid.dotted_string for oid in extended} if extended else set()
    if not present or not present <= allowed:
        problems.append(
            "its extended key usage must be emailProtection, documentSigning or C2PA claim "
            "signing, and nothing else"
        )
    if x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in extensions:
        problems.append("it needs an Authority Key Identifier")
    return problems


@dataclass(frozen=True)
class CredentialsReport:
    """What a file's Content Credentials say, as a verifier reads them."""

    state: str  # ABSENT, VALID (signature and content intact), TAMPERED or INVALID
    trusted: bool = False  # the signer chains to a trust anchor given to the reader
    signer: str = ""  # the signing certificate's common name
    issuer: str = ""  # its issuer's organisation
    generator: str = ""  # "Re:Mind 0.1.0"
    actions: list[str] = field(default_factory=list)  # "c2pa.created"
    digital_source_type: str = ""
    problems: list[str] = field(default_factory=list)  # the SDK's failure codes
    manifest_json: str = ""  # the whole manifest store, for tools and tests


ABSENT, VALID, TAMPERED, INVALID = "ABSENT", "VALID", "TAMPERED", "INVALID"
# Failure codes that mean the content or the manifest changed after signing.
_CHANGED = ("dataHash.mismatch", "bmffHash.mismatch", "hashedURI.mismatch", "boxesHash.mismatch")
_UNTRUSTED = "signingCredential.untrusted"


def read_credentials(
    media: BinaryIO, content_type: str, trust_anchors: str = ""
) -> CredentialsReport:
    """The Content Credentials in a media stream. `trust_anchors`: PEM roots whose signers are
    reported as trusted (an unknown root is valid but not trusted)."""
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    settings["trust"] = {"trust_config": TRUST_CONFIG}
    if trust_anchors:
        settings["trust"]["user_anchors"] = trust_anchors
    try:
        reader = c2pa.Reader(content_type, media, context=c2pa.Context.from_dict(settings))
    except c2pa.C2paError.ManifestNotFound:
        return CredentialsReport(ABSENT)
    except c2pa.C2paError as error:
        raise InvalidInput(f"The file's Content Credentials cannot be read: {error}") from None
    with reader:
        store = json.loads(reader.json())
    return _report(store)


def _report(store: dict[str, Any]) -> CredentialsReport:
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    failures = store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])
    codes = [failure.get("code", "") for failure in failures]
    problems = [code for code in codes if code != _UNTRUSTED]
    if any(code.endswith(_CHANGED) for code in problems):
        state = TAMPERED
    elif problems or store.get("validation_state") == "Invalid":
        state = INVALID
    else:
        state = VALID
    actions: list[dict[str, Any]] = next(
        (
            assertion.get("data", {}).get("actions", [])
            for assertion in active.get("assertions", [])
            if assertion.get("label", "").startswith("c2pa.actions")
        ),
        [],
    )
    generators = active.get("claim_generator_info", [{}])
    signature = active.get("signature_info", {})
    return CredentialsReport(
        state=state,
        trusted=store.get("validation_state") == "Trusted",
        signer=signature.get("common_name", ""),
        issuer=signature.get("issuer", ""),
        generator=" ".join(filter(None, (generators[0].get("name"), generators[0].get("version")))),
        actions=[action.get("action", "") for action in actions],
        digital_source_type=next(
            (action["digitalSourceType"] for action in actions if "digitalSourceType" in action),
            "",
        ),
        problems=problems,
        manifest_json=json.dumps(store),
    )
