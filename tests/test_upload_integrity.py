"""An acknowledged upload chunk is never lost or corrupted, and nothing stored is orphaned:
racing appends and finishes on the real server, crashes injected between the writes of one
call, and the sweeper after a real kill -9 of the orchestrator mid-upload."""

import hashlib
import io
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from remind.v1 import media_service_pb2 as media_pb2

from services.client import RemindClient
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.media_library import (
    DONE,
    MediaLibrary,
    Part,
    Upload,
    form_key,
    part_key,
)
from services.orchestrator.sweeper import Sweeper
from services.shared import errors
from services.shared.storage import ObjectStore
from services.stack import LocalStack, pid_alive

SCOPE = "local"


def _create(client: RemindClient, size: int) -> str:
    return client.media.CreateUpload(
        media_pb2.CreateUploadRequest(content_type="image/png", filename="a.png", size_bytes=size)
    ).upload


def _append(client: RemindClient, upload: str, offset: int, data: bytes) -> int:
    return client.media.AppendUpload(
        media_pb2.AppendUploadRequest(upload=upload, offset=offset, data=data), timeout=30
    ).received_bytes


def _finish(client: RemindClient, upload: str) -> media_pb2.Media:
    return client.media.FinishUpload(media_pb2.FinishUploadRequest(upload=upload), timeout=60).media


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except grpc.RpcError as error:
        return error.code()


def test_racing_chunks_at_one_offset_keep_exactly_one(client: RemindClient):
    chunks = [bytes([n]) * 5000 for n in range(8)]
    upload = _create(client, 5000)
    with ThreadPoolExecutor(len(chunks)) as pool:
        outcomes = list(pool.map(lambda c: _outcome(lambda: _append(client, upload, 0, c)), chunks))
    won = [chunk for chunk, outcome in zip(chunks, outcomes, strict=True) if outcome == 5000]
    assert len(won) == 1, outcomes
    assert all(outcome in (5000, grpc.StatusCode.FAILED_PRECONDITION) for outcome in outcomes), (
        outcomes
    )
    assert client.download(_finish(client, upload).name) == won[0]


def test_the_same_chunk_sent_many_times_at_once_is_stored_once(client: RemindClient):
    data = os.urandom(20_000)
    upload = _create(client, len(data))
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: _append(client, upload, 0, data[:10_000]), range(8)))
    assert outcomes == [10_000] * 8
    assert _append(client, upload, 10_000, data[10_000:]) == 20_000
    assert client.download(_finish(client, upload).name) == data


def test_chunks_racing_a_finish_end_as_exactly_the_acknowledged_bytes(client: RemindClient):
    data = os.urandom(64 * 1000)
    upload = _create(client, len(data))
    acknowledged = 0
    finished: list[media_pb2.Media] = []

    def append_all() -> None:
        nonlocal acknowledged
        for offset in range(0, len(data), 1000):
            piece = data[offset : offset + 1000]
            outcome = _outcome(lambda o=offset, p=piece: _append(client, upload, o, p))
            if outcome != offset + 1000:
                assert outcome == grpc.StatusCode.FAILED_PRECONDITION, outcome
                return
            acknowledged = offset + 1000

    appender = threading.Thread(target=append_all)
    appender.start()
    while acknowledged < 8000:
        time.sleep(0.01)
    with ThreadPoolExecutor(3) as pool:  # three finishes at once all return the same media
        finished = list(pool.map(lambda _: _finish(client, upload), range(3)))
    appender.join(timeout=60)
    assert len({media.name for media in finished}) == 1
    stored = client.download(finished[0].name)
    assert stored == data[:acknowledged], (len(stored), acknowledged)
    assert finished[0].sha256 == hashlib.sha256(stored).hexdigest()
    refused = _outcome(lambda: _append(client, upload, acknowledged, b"more"))
    assert refused == grpc.StatusCode.FAILED_PRECONDITION  # a finished upload stays sealed


# ---------------------------------------------------------------------------------------------
# Crashes between the writes of one call, on the real store
# ---------------------------------------------------------------------------------------------


class Crash(Exception):
    """The process died here: nothing after this point of the call ran."""


class CrashingStore(ObjectStore):
    """The real store, with a crash armed before or after the next write of a kind."""

    def __init__(self, store: ObjectStore) -> None:
        self.__dict__.update(store.__dict__)
        self.armed: tuple[str, str] | None = None

    def _maybe_crash(self, write: str, when: str) -> None:
        if self.armed == (write, when):
            self.armed = None
            raise Crash(f"{when} {write}")

    def put(self, bucket, key, data, length, content_type):  # type: ignore[no-untyped-def]
        self._maybe_crash("put", "before")
        super().put(bucket, key, data, length, content_type)
        self._maybe_crash("put", "after")

    def replace_record(self, bucket, key, record, version):  # type: ignore[no-untyped-def]
        self._maybe_crash("record", "before")
        written = super().replace_record(bucket, key, record, version)
        self._maybe_crash("record", "after")
        return written


CRASH_POINTS = st.one_of(
    st.none(), st.tuples(st.sampled_from(["put", "record"]), st.sampled_from(["before", "after"]))
)
STEPS = st.lists(
    st.tuples(st.sampled_from(["append", "append", "append", "retry", "finish"]), CRASH_POINTS),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def crashing(store: ObjectStore) -> tuple[MediaLibrary, CrashingStore]:
    crashing_store = CrashingStore(store)
    return MediaLibrary(crashing_store, OrchestratorSettings()), crashing_store


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(steps=STEPS, sizes=st.lists(st.integers(1, 3000), min_size=12, max_size=12))
def test_any_interleaving_with_crashes_finishes_as_the_acknowledged_bytes(
    crashing: tuple[MediaLibrary, CrashingStore], steps: list, sizes: list[int]
):
    """A client retries whatever crashed until it is acknowledged, as clients must (the
    outcome of a call that died is unknown). Whatever the crash points, the finished media
    equals the acknowledged bytes, and the upload takes nothing after its finish."""
    library, store = crashing
    data = os.urandom(sum(sizes))
    upload, _ = library.create_upload(SCOPE, "image/png", "p.png", len(data))
    acknowledged, chunk, media = 0, 0, None

    def until_acknowledged(call: Callable[[], object]) -> object:
        for _ in range(5):
            try:
                return call()
            except Crash:
                continue
        raise AssertionError("a retry after a crash never went through")

    for action, crash in steps:
        store.armed = crash
        if action == "finish" and not acknowledged:
            with pytest.raises(errors.FailedPrecondition):  # nothing to finish yet
                library.finish_upload(SCOPE, upload)
            continue
        if action == "finish" or chunk == len(sizes):
            media = until_acknowledged(lambda: library.finish_upload(SCOPE, upload))
            break
        offset, size = acknowledged, sizes[chunk]
        piece = data[offset : offset + size]
        received = until_acknowledged(
            lambda o=offset, p=piece: library.append_upload(SCOPE, upload, o, p)
        )
        assert received == offset + size
        acknowledged, chunk = offset + size, chunk + 1
        if action == "retry":  # the client did not hear the answer and sends it again
            assert library.append_upload(SCOPE, upload, offset, piece) == acknowledged
    store.armed = None
    if not acknowledged:
        return
    if media is None:
        media = library.finish_upload(SCOPE, upload)
    stored = library.store.get_bytes(media.bucket, media.key)
    assert stored == data[:acknowledged]
    assert library.finish_upload(SCOPE, upload) == media  # finishing again: the same media
    with pytest.raises(errors.FailedPrecondition):
        library.append_upload(SCOPE, upload, acknowledged, b"late")


# ---------------------------------------------------------------------------------------------
# Orphans: removed by the sweeper after the grace, never what a record owns
# ---------------------------------------------------------------------------------------------


def _stalled_stream(client: RemindClient, sent: threading.Event) -> None:
    def requests():  # type: ignore[no-untyped-def]
        yield media_pb2.UploadMediaRequest(
            metadata=media_pb2.UploadMediaMetadata(content_type="video/mp4", filename="big.mp4")
        )
        for _ in range(12):  # 12 MiB: the store has begun a multipart write
            yield media_pb2.UploadMediaRequest(chunk=os.urandom(1024 * 1024))
        sent.set()
        time.sleep(600)

    try:
        client.media.UploadMedia(requests(), timeout=120)
    except grpc.RpcError:
        pass  # the orchestrator is killed under it


def test_the_sweeper_removes_what_a_killed_orchestrator_left_and_keeps_what_is_owned(
    stack: LocalStack, client: RemindClient, store: ObjectStore, astronaut_png: bytes
):
    settings = OrchestratorSettings()
    kept = client.upload(astronaut_png, "kept.png")
    open_upload = _create(client, 10)
    _append(client, open_upload, 0, b"0123456789")

    sent = threading.Event()
    threading.Thread(target=_stalled_stream, args=(client, sent), daemon=True).start()
    assert sent.wait(60)
    partial_before = {p.upload_id for p in store.partial_uploads(settings.uploads_bucket)}
    deadline = time.monotonic() + 30
    while not partial_before and time.monotonic() < deadline:
        time.sleep(0.2)
        partial_before = {p.upload_id for p in store.partial_uploads(settings.uploads_bucket)}
    assert partial_before, "the stream never began a multipart write"
    pid = stack.info().pids["orchestrator"]
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)
    stack.start()

    # What a crash between "part written" and "record updated" leaves, and an abandoned form.
    orphan_id = uuid.uuid4().hex
    orphan_part = part_key(SCOPE, orphan_id, Part(0, 3, hashlib.sha256(b"abc").hexdigest()))
    store.put(settings.uploads_bucket, orphan_part, io.BytesIO(b"abc"), 3, "image/png")
    orphan_form = form_key(SCOPE, orphan_id)
    store.put(settings.uploads_bucket, orphan_form, io.BytesIO(b"<p>"), 3, "text/html")

    library = MediaLibrary(store, settings)
    now = Sweeper(library, replace(settings, sweep_grace_seconds=0))
    now.sweep()
    partial_after = {p.upload_id for p in store.partial_uploads(settings.uploads_bucket)}
    assert not partial_before & partial_after, "a killed write's parts are still there"
    assert not store.exists(settings.uploads_bucket, orphan_part)
    assert not store.exists(settings.uploads_bucket, orphan_form)
    assert client.download(kept.name) == astronaut_png  # owned media stays
    assert _append(client, open_upload, 0, b"0123456789") == 10  # a live upload stays
    assert client.download(_finish(client, open_upload).name) == b"0123456789"

    stale = _create(client, 10)
    _append(client, stale, 0, b"abandoned!")
    expiring = Sweeper(library, replace(settings, sweep_grace_seconds=0, upload_lifetime_seconds=0))
    expiring.sweep()
    with pytest.raises(grpc.RpcError) as caught:
        _finish(client, stale)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    stale_id = stale.removeprefix("uploads/")
    assert not store.list_keys(settings.uploads_bucket, f"{SCOPE}/parts/{stale_id}/")
    assert client.download(kept.name) == astronaut_png


def test_a_finished_uploads_record_is_kept_for_retries_then_expires(
    client: RemindClient, store: ObjectStore
):
    settings = OrchestratorSettings()
    upload = _create(client, 4)
    _append(client, upload, 0, b"data")
    media = _finish(client, upload)
    record_key = f"{SCOPE}/uploads/{upload.removeprefix('uploads/')}.json"
    assert Upload.of(store.get_record(settings.records_bucket, record_key)).state == DONE
    assert _finish(client, upload).name == media.name
    Sweeper(MediaLibrary(store, settings), replace(settings, sweep_grace_seconds=0)).sweep()
    assert not store.exists(settings.records_bucket, record_key)
    assert client.download(media.name) == b"data"
