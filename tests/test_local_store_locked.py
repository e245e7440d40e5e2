"""The local S3 server is locked like production: every port its process listens on binds
127.0.0.1 and, except through the S3 API with the stack's keys, refuses to list, read, write
or delete anyone's objects, over HTTP and over gRPC. Its files are the user's alone."""

import http.client
import io
import os
import socket
import stat
import time
from pathlib import Path

import grpc
import pytest

from services.shared.storage import ObjectStore
from services.stack import LocalStack

BUCKET = "remind-uploads"
SECRET = b"acme's private recording " * 40
# A made-up volume file id: the volume server must refuse it before looking it up.
FILE_ID = "3,01637037d6"
# The master's HTML status page (volume counts and disk use) is the one anonymous answer; like
# every other, it must not name or show an object.
STATUS_PAGE = ("GET", "/")


@pytest.fixture(scope="module")
def acme_object(store: ObjectStore) -> str:
    store.ensure_buckets(BUCKET)
    key = f"acme/locked-{time.time_ns()}.wav"
    store.put_new(BUCKET, key, io.BytesIO(SECRET), len(SECRET))
    return key


def _store_pid(stack: LocalStack) -> int:
    """The S3 server's pid now: an earlier test may have stopped and restarted it."""
    stack.start()
    info = stack.info()
    assert info is not None
    return info.pids["s3"]


def _listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            if width == 4:
                host = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                host = socket.inet_ntop(socket.AF_INET6, words)
            listening.append((host, int(port, 16)))
    return sorted(listening, key=lambda entry: entry[1])


def _anonymous_requests(key: str) -> list[tuple[str, str]]:
    """What an attacker on the machine (or a web page in its browser) would try."""
    return [
        # S3 API, unsigned
        ("GET", "/"),
        ("GET", f"/{BUCKET}?list-type=2"),
        ("GET", f"/{BUCKET}/{key}"),
        ("PUT", f"/{BUCKET}/acme/planted.wav"),
        ("DELETE", f"/{BUCKET}/{key}"),
        # filer HTTP API
        ("GET", f"/buckets/{BUCKET}/acme/"),
        ("GET", f"/buckets/{BUCKET}/{key}"),
        ("PUT", f"/buckets/{BUCKET}/acme/planted.wav"),
        ("DELETE", f"/buckets/{BUCKET}/{key}"),
        # master HTTP API
        ("GET", "/dir/assign"),
        ("GET", "/dir/lookup?volumeId=1"),
        ("GET", f"/col/delete?collection={BUCKET}"),
        ("GET", "/vol/grow?count=1"),
        # volume server HTTP API
        ("GET", f"/{FILE_ID}"),
        ("PUT", f"/{FILE_ID}"),
        ("DELETE", f"/{FILE_ID}"),
    ]


def _http(port: int, method: str, path: str) -> tuple[int, bytes]:
    """Status and body, or (0, b"") when the port does not speak HTTP/1 at all."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request(method, path, body=b"planted" if method == "PUT" else None)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        connection.close()


def _grpc_refused(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status of a filer call on `port`; only a server that answered gives anything but
    UNAVAILABLE."""
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    )
    with channel:
        call = channel.unary_unary("/filer_pb.SeaweedFiler/GetFilerConfiguration")
        try:
            call(b"", timeout=5)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_every_port_of_the_store_binds_loopback_and_refuses_anonymous_access(
    stack: LocalStack, store: ObjectStore, acme_object: str
):
    listening = _listening_sockets(_store_pid(stack))
    assert listening, "the S3 server listens on nothing?"
    assert {host for host, _ in listening} == {"127.0.0.1"}, listening
    store_ca = (stack.state_dir / "s3-tls" / "ca.pem").read_bytes()
    for _, port in listening:
        for method, path in _anonymous_requests(acme_object):
            status, body = _http(port, method, path)
            if (method, path) != STATUS_PAGE:
                assert not 200 <= status < 400, f"{port}: {method} {path} -> {status} {body[:99]!r}"
            assert SECRET[:40] not in body, f"{port}: {method} {path} read the object"
            if acme_object not in path:  # an error may name the key it was asked for
                assert acme_object.encode() not in body, f"{port}: {method} {path} listed it"
        for credentials in (None, grpc.ssl_channel_credentials(store_ca)):
            code = _grpc_refused(port, credentials)
            assert code == grpc.StatusCode.UNAVAILABLE, (
                f"{port}: gRPC without a client cert: {code}"
            )
    # Nothing was deleted, planted or changed; the S3 API with the stack's keys still works.
    assert store.get_bytes(BUCKET, acme_object) == SECRET
    assert not store.exists(BUCKET, "acme/planted.wav")


def test_the_stores_files_and_sockets_are_the_users_alone(stack: LocalStack):
    data = stack.state_dir / "s3-data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(stack.state_dir.stat().st_mode) == 0o700
    exposed = [
        f"{path.relative_to(data)} {stat.S_IMODE(path.stat().st_mode):o}"
        for path in data.rglob("*")
        # SeaweedFS writes its volume info files (.vif: sizes and versions) 0644 whatever
        # the umask; the 0700 folder keeps them from other users all the same.
        if path.is_file() and path.suffix != ".vif" and path.stat().st_mode & 0o077
    ]
    assert exposed == []
    # Its local sockets (in /tmp, named after its ports) admit only the user.
    ports = {str(port) for _, port in _listening_sockets(_store_pid(stack))}
    sockets = [
        path
        for path in Path("/tmp").glob("seaweedfs-*.sock")
        if path.stem.rsplit("-", 1)[-1] in ports
    ]
    assert sockets
    assert [path for path in sockets if path.stat().st_mode & 0o077] == []
