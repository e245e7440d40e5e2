"""The local stack: a real S3 server (SeaweedFS), the job queue (NATS with JetStream), the
faceswap, voice and lipsync services, one or more orchestrator replicas, the gRPC-web edge
(Envoy) and the web client's static files, each its own process on 127.0.0.1. Used by
`make up/down/run`, the CLI and the tests.

Processes run in their own sessions and are stopped by the pids recorded in the stack's
state file, never by name.
"""

import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from minio import Minio

from services.local_issuer import (
    AUDIENCE,
    ISSUER,
    TOKEN_SECONDS,
    ensure_local_issuer,
    issue_token,
)
from services.local_store import ensure_store_tls, new_store_keys
from services.orchestrator.auth import key_digest
from services.shared.signing_certificates import LocalCredentials, ensure_local_credentials
from services.shared.storage_grants import new_grant_keys

DEFAULT_BASE_PORT = 18300
# Offsets from the base port. SeaweedFS also listens on each of its ports + 10000 (gRPC).
# (Offsets 4, 6 and 7 were its Iceberg, metrics and Lance ports, which are now off.)
S3, MASTER, FILER, VOLUME, ADMIN = 0, 1, 2, 3, 5
FACESWAP, ORCHESTRATOR, FACESWAP_METRICS, ORCHESTRATOR_METRICS = 10, 11, 12, 13
VOICE, VOICE_METRICS = 14, 15
# The gRPC-web edge (Envoy) and the web client's static files.
EDGE, WEB = 16, 17
LIPSYNC, LIPSYNC_METRICS = 18, 19
NATS = 20
# Orchestrator replicas after the first: orchestrator-2 on 21 (metrics 22), and so on.
MAX_ORCHESTRATORS = 4
LAST_PORT = NATS + 2 * (MAX_ORCHESTRATORS - 1)
# The gRPC services (`python -m services.<name>.server`): their port and metrics port offsets.
SERVICE_PORTS = {
    "faceswap": (FACESWAP, FACESWAP_METRICS),
    "voice": (VOICE, VOICE_METRICS),
    "lipsync": (LIPSYNC, LIPSYNC_METRICS),
    "orchestrator": (ORCHESTRATOR, ORCHESTRATOR_METRICS),
    **{
        f"orchestrator-{replica}": (NATS + 2 * replica - 3, NATS + 2 * replica - 2)
        for replica in range(2, MAX_ORCHESTRATORS + 1)
    },
}
REPO = Path(__file__).resolve().parent.parent
EDGE_CONFIG_TEMPLATE = REPO / "deploy" / "envoy" / "envoy.local.yaml.tmpl"
WEB_DIST = REPO / "web" / "dist"
READY_TIMEOUT_SECONDS = 120.0
NATS_USER = "remind"
# An orchestrator replica in the edge's cluster (see deploy/envoy/envoy.local.yaml.tmpl).
ENDPOINT = (
    "              - endpoint:\n"
    "                  address:\n"
    "                    socket_address: {{address: 127.0.0.1, port_value: {port}}}\n"
)


class _Loopback:
    """A StackInfo attribute: the address of one of its ports on 127.0.0.1."""

    def __init__(self, offset: int, scheme: str = "") -> None:
        self.offset = offset
        self.scheme = scheme

    def __get__(self, info: "StackInfo", owner: type | None = None) -> str:
        return f"{self.scheme}127.0.0.1:{info.base_port + self.offset}"


@dataclass(frozen=True)
class StackInfo:
    base_port: int
    access_key: str
    secret_key: str
    pids: dict[str, int]
    # API key per tenant, for local clients; the orchestrator holds only their digests.
    # (Absent from the state files of older stacks, which must still stop.)
    api_keys: dict[str, str] = field(default_factory=dict)
    # The orchestrator's storage grant key pair (base64); the voice service holds the public one.
    grant_signing_key: str = ""
    grant_verify_key: str = ""
    # The job queue's password (user "remind").
    nats_password: str = ""

    s3_endpoint = _Loopback(S3)
    nats_url = _Loopback(NATS, "nats://")
    orchestrator_address = _Loopback(ORCHESTRATOR)
    faceswap_address = _Loopback(FACESWAP)
    voice_address = _Loopback(VOICE)
    lipsync_address = _Loopback(LIPSYNC)
    edge_url = _Loopback(EDGE, "http://")
    web_url = _Loopback(WEB, "http://")

    def orchestrators(self) -> list[str]:
        """The orchestrator replicas running, by process name."""
        return sorted(name for name in self.pids if name.startswith("orchestrator"))

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.base_port + SERVICE_PORTS[service][0]}"

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.base_port + SERVICE_PORTS[service][1]}/metrics"

    def s3_env(self) -> dict[str, str]:
        return {
            "REMIND_S3_ENDPOINT": self.s3_endpoint,
            "REMIND_S3_ACCESS_KEY": self.access_key,
            "REMIND_S3_SECRET_KEY": self.secret_key,
        }


def ports_free(base_port: int) -> bool:
    ports = [base_port + offset for offset in range(LAST_PORT + 1)]
    ports += [base_port + offset + 10000 for offset in (S3, MASTER, FILER, VOLUME, ADMIN)]
    for port in ports:
        with socket.socket() as probe:
            # As the servers bind: connections of a stack just stopped, left in TIME_WAIT, do
            # not hold a port; a listening socket still does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM for a graceful stop, SIGKILL if it does not end in time."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


class LocalStack:
    def __init__(
        self,
        state_dir: Path,
        base_port: int = DEFAULT_BASE_PORT,
        extra_env: dict[str, str] | None = None,
        tenants: tuple[str, ...] = ("local",),
        orchestrators: int = 1,
    ) -> None:
        if not 1 <= orchestrators <= MAX_ORCHESTRATORS:
            raise ValueError(f"1 to {MAX_ORCHESTRATORS} orchestrator replicas, not {orchestrators}")
        self.orchestrators = orchestrators
        self.state_dir = state_dir.resolve()
        self.base_port = base_port
        self.extra_env = extra_env or {}
        self.tenants = tenants
        self.state_file = self.state_dir / "stack.json"

    def info(self) -> StackInfo | None:
        if not self.state_file.exists():
            return None
        return StackInfo(**json.loads(self.state_file.read_text()))

    def running(self) -> bool:
        info = self.info()
        return bool(info and info.pids and all(pid_alive(pid) for pid in info.pids.values()))

    def _secrets(self) -> dict:
        """S3 keys, API keys and the storage grant keys, made once per stack directory so data
        and clients keep working across restarts; readable by this user only."""
        secrets_file = self.state_dir / "secrets.json"
        stored = json.loads(secrets_file.read_text()) if secrets_file.exists() else {}
        stored.setdefault("access_key", "remind-local")
        stored.setdefault("secret_key", secrets.token_hex(20))
        stored.setdefault("store_keys", new_store_keys())
        if "grant_signing_key" not in stored:
            stored["grant_signing_key"], stored["grant_verify_key"] = new_grant_keys()
        stored.setdefault("nats_password", secrets.token_urlsafe(24))
        api_keys = stored.setdefault("api_keys", {})
        for tenant in self.tenants:
            api_keys.setdefault(tenant, f"rmk_{secrets.token_urlsafe(24)}")
        secrets_file.write_text(json.dumps(stored))
        secrets_file.chmod(0o600)
        digests = {tenant: [key_digest(key)] for tenant, key in api_keys.items()}
        (self.state_dir / "api-keys.json").write_text(json.dumps({"tenants": digests}))
        return stored

    @property
    def scratch_dir(self) -> Path:
        return self.state_dir / "scratch"

    @property
    def identity_dir(self) -> Path:
        return self.state_dir / "identity"

    def token(self, subject: str, seconds: int = TOKEN_SECONDS) -> str:
        """A token of the stack's own issuer for a person of the local tenant."""
        return issue_token(self.identity_dir, subject, seconds)

    def signing_credentials(self) -> LocalCredentials:
        """The local CA and Content Credentials signing certificate, owner-only in c2pa/."""
        return ensure_local_credentials(self.state_dir / "c2pa")

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> int:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
                # What the processes write (stored objects, logs, sockets) is the user's alone.
                umask=0o077,
            )
        return process.pid

    def _save(self, info: StackInfo) -> None:
        self.state_file.write_text(json.dumps(asdict(info), indent=2))
        self.state_file.chmod(0o600)

    def start(self) -> StackInfo:
        """Starts whatever part of the stack is not running, in dependency order."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        previous = self.info()
        pids = {
            name: pid for name, pid in (previous.pids if previous else {}).items() if pid_alive(pid)
        }
        if not pids and not ports_free(self.base_port):
            raise RuntimeError(
                f"ports {self.base_port}..{self.base_port + LAST_PORT} (and +10000) are "
                "in use: stop the other stack (make down) or pick another base"
            )
        stored = self._secrets()
        info = StackInfo(
            self.base_port,
            stored["access_key"],
            stored["secret_key"],
            pids,
            stored["api_keys"],
            stored["grant_signing_key"],
            stored["grant_verify_key"],
            stored["nats_password"],
        )
        try:
            for name, (command, env) in self._processes(info).items():
                if name in info.pids:
                    continue
                info.pids[name] = self._spawn(name, command, env)
                self._save(info)
                if name == "s3":
                    wait_for_s3(info)
                elif name == "nats":
                    wait_for_port(info.base_port + NATS, info.pids[name], name)
                elif name == "edge":
                    wait_for_http(f"{info.edge_url}/healthz", info.pids[name], name)
                elif name == "web":
                    wait_for_http(f"{info.web_url}/index.html", info.pids[name], name)
                else:
                    wait_for_health(info.address(name), info.pids[name], name)
        except BaseException:
            self._save(info)
            self.stop()
            raise
        return info

    def _processes(self, info: StackInfo) -> dict[str, tuple[list[str], dict[str, str]]]:
        base = self.base_port
        # The services' temporary folders, where a test can see what a killed one left.
        scratch = {"REMIND_SCRATCH_ROOT": str(self.scratch_dir)}
        service_env = {**info.s3_env(), **scratch, **self.extra_env}
        signing = self.signing_credentials()
        # The stack's issuer signs people of its first tenant in.
        identity = ensure_local_issuer(self.identity_dir, self.tenants[0])

        def service(name: str, **env: str) -> tuple[list[str], dict[str, str]]:
            port, metrics_port = SERVICE_PORTS[name]
            module = name.split("-")[0]  # orchestrator-2 runs the orchestrator
            prefix = f"REMIND_{module.upper()}"
            return [sys.executable, "-m", f"services.{module}.server"], {
                **service_env,
                f"{prefix}_PORT": str(base + port),
                f"{prefix}_METRICS_PORT": str(base + metrics_port),
                **env,
            }

        def orchestrator(name: str) -> tuple[list[str], dict[str, str]]:
            return service(
                name,
                REMIND_ORCHESTRATOR_FACESWAP_ADDRESS=info.faceswap_address,
                REMIND_ORCHESTRATOR_LIPSYNC_ADDRESS=info.lipsync_address,
                REMIND_ORCHESTRATOR_VOICE_ADDRESS=info.voice_address,
                REMIND_ORCHESTRATOR_API_KEYS_FILE=str(self.state_dir / "api-keys.json"),
                REMIND_ORCHESTRATOR_TOKEN_ISSUERS_FILE=str(identity.issuers),
                REMIND_ORCHESTRATOR_C2PA_CERTIFICATE_FILE=str(signing.certificate_chain),
                REMIND_ORCHESTRATOR_C2PA_PRIVATE_KEY_FILE=str(signing.private_key),
                # The edge runs on loopback: its x-forwarded-for names the caller.
                REMIND_ORCHESTRATOR_TRUSTED_PROXIES="127.0.0.1",
                REMIND_ORCHESTRATOR_GRANT_SIGNING_KEY=info.grant_signing_key,
                REMIND_ORCHESTRATOR_NATS_URL=info.nats_url,
                REMIND_ORCHESTRATOR_NATS_USER=NATS_USER,
                REMIND_ORCHESTRATOR_NATS_PASSWORD=info.nats_password,
            )

        replicas = ["orchestrator"] + [
            f"orchestrator-{n}" for n in range(2, self.orchestrators + 1)
        ]
        return {
            "s3": (self._s3_command(info), self._s3_env()),
            "nats": (self._nats_command(info), {}),
            "faceswap": service("faceswap"),
            "voice": service("voice", REMIND_VOICE_GRANT_VERIFY_KEY=info.grant_verify_key),
            "lipsync": service("lipsync"),
            **{name: orchestrator(name) for name in replicas},
            "edge": (self._edge_command(identity.jwks), {}),
            "web": (
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(WEB_DIST),
                    str(base + WEB),
                ],
                {},
            ),
        }

    def _edge_command(self, jwks: Path) -> list[str]:
        """Envoy with the local edge config: gRPC-web, CORS and the token check in front of the
        orchestrator."""
        config = self.state_dir / "envoy.yaml"
        config.write_text(
            string.Template(EDGE_CONFIG_TEMPLATE.read_text()).substitute(
                LISTEN_PORT=self.base_port + EDGE,
                ORCHESTRATOR_PORT=self.base_port + ORCHESTRATOR,
                MORE_ORCHESTRATORS="".join(
                    ENDPOINT.format(port=self.base_port + SERVICE_PORTS[f"orchestrator-{n}"][0])
                    for n in range(2, self.orchestrators + 1)
                ),
                TOKEN_ISSUER=ISSUER,
                TOKEN_AUDIENCE=AUDIENCE,
                JWKS_FILE=jwks,
            )
        )
        envoy = str(Path(sys.executable).parent / "envoy")
        return [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "warn"]

    def _nats_command(self, info: StackInfo) -> list[str]:
        """nats-server with JetStream on loopback, its store in the stack's folder, and one
        user: anonymous clients are refused."""
        store = self.state_dir / "nats"
        store.mkdir(mode=0o700, exist_ok=True)
        config = self.state_dir / "nats.conf"
        config.write_text(
            f"listen: 127.0.0.1:{info.base_port + NATS}\n"
            f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n"
            f"authorization {{ user: {NATS_USER}, password: {json.dumps(info.nats_password)} }}\n"
        )
        config.chmod(0o600)
        return [str(Path(sys.executable).parent / "nats-server"), "-c", str(config)]

    def _s3_env(self) -> dict[str, str]:
        """The store's JWT signing keys, admin password and gRPC certificates (see
        services/local_store.py)."""
        stored = json.loads((self.state_dir / "secrets.json").read_text())
        return {**stored["store_keys"], **ensure_store_tls(self.state_dir / "s3-tls")}

    def _s3_command(self, info: StackInfo) -> list[str]:
        data = self.state_dir / "s3-data"
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.chmod(0o700)
        # `weed mini` saves its options there and reloads any not given below (a metrics port
        # of an older stack, say): the command line is the whole configuration.
        (data / "mini.options").unlink(missing_ok=True)
        config = self.state_dir / "s3-identities.json"
        # With an identities file SeaweedFS rejects wrong keys and anonymous requests.
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "remind",
                            "credentials": [
                                {"accessKey": info.access_key, "secretKey": info.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        base = self.base_port
        weed = str(Path(sys.executable).parent / "weed")
        return [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-s3.port={base + S3}",
            f"-master.port={base + MASTER}",
            f"-filer.port={base + FILER}",
            f"-volume.port={base + VOLUME}",
            f"-admin.port={base + ADMIN}",
            # Only S3 serves objects: no master or filer HTTP API, no other gateways.
            "-disableHttp",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
        ]

    def stop(self, name: str | None = None) -> None:
        """Stops one process, or all of them (services first, then the store)."""
        info = self.info()
        if info is None:
            return
        replicas = [f"orchestrator-{n}" for n in range(MAX_ORCHESTRATORS, 1, -1)]
        order = ("web", "edge", *replicas, "orchestrator", "lipsync", "voice", "faceswap", "nats")
        for process in (*order, "s3"):
            if process in info.pids and name in (None, process):
                stop_pid(info.pids.pop(process))
        self._save(info)


def wait_for_s3(info: StackInfo) -> None:
    client = Minio(
        info.s3_endpoint, access_key=info.access_key, secret_key=info.secret_key, secure=False
    )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            client.list_buckets()
            return
        except Exception:  # noqa: BLE001 - not up yet
            if not pid_alive(info.pids["s3"]) or time.monotonic() > deadline:
                raise RuntimeError("the S3 server did not start; see its log") from None
            time.sleep(0.2)


def wait_for_port(port: int, pid: int, name: str) -> None:
    def accepts() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True

    _wait_until(accepts, pid, name)


def wait_for_http(url: str, pid: int, name: str) -> None:
    def answers() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    _wait_until(answers, pid, name)


def _wait_until(ready: Callable[[], bool], pid: int, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if not pid_alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"the {name} process did not become ready; see its log")
        time.sleep(0.2)


def wait_for_health(address: str, pid: int, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if not pid_alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} service did not become healthy; see its log")
            time.sleep(0.2)
