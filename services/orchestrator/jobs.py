"""Media jobs as long-running operations: run in a bounded pool, watched live, persisted.

The job record in the store is the truth that survives restarts; the in-memory board adds
what only a running process has (the cancel switch, watchers waiting for the next change).
Watchers see every change at once, from memory. Changes of state are written to the record
before the job goes on; progress is written in the background, at most once per
`progress_persist_seconds` per job and one write at a time, so a slow or absent store never
slows a job down.
"""

import base64
import binascii
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from google.protobuf import json_format
from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.config import OrchestratorSettings
from services.shared import errors
from services.shared.grpc_status import status_for
from services.shared.observability import JOBS_PENDING, STAGE_SECONDS
from services.shared.storage import ObjectStore
from services.shared.tracing import set_trace_id

log = logging.getLogger(__name__)

JOB_PREFIX = "jobs/"
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
# How long a watcher sleeps between checks that its caller is still there.
WATCH_POLL_SECONDS = 1.0
MAX_ENDED_IN_MEMORY = 500
QUEUE_FULL_RETRY_SECONDS = 30
# How long deleting a person's data waits for their running jobs to stop.
STOP_TIMEOUT_SECONDS = 60.0
# How long an ended job's record is retried while the store is unreachable.
RECORD_RETRY_SECONDS = 600.0
# After a progress write failed, the job's next one waits this long: the store is likely
# still away, and its failures take seconds (connection timeouts and retries).
PROGRESS_PAUSE_AFTER_FAILURE_SECONDS = 10.0


class JobCancelled(Exception):
    """Raised inside a job's work when its cancel switch is on."""


def new_job_id() -> str:
    """32 hex digits that sort by creation time, so listings come newest first cheaply."""
    return f"{time.time_ns() // 1_000_000:012x}{uuid.uuid4().hex[:20]}"


def job_id_of(name: str) -> str:
    job_id = name[len(JOB_PREFIX) :] if name.startswith(JOB_PREFIX) else ""
    if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
        raise errors.InvalidInput(
            f"Job {errors.shown(name)} is not a valid name; expected jobs/<id>."
        )
    return job_id


BAD_PAGE_TOKEN = "page_token is not one this server returned: list again without it."


def page_token(job_id: str) -> str:
    """An opaque page token: the previous page's last job, with nothing of storage in it."""
    return base64.urlsafe_b64encode(bytes.fromhex(job_id)).decode().rstrip("=")


def _job_id_of_page_token(token: str) -> str:
    try:
        job_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).hex()
    except (binascii.Error, ValueError):
        job_id = ""
    if len(job_id) != 32 or page_token(job_id) != token:
        raise errors.InvalidInput(BAD_PAGE_TOKEN)
    return job_id


@dataclass
class _LiveJob:
    scope: str
    job: jobs_pb2.Job
    cancel: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    future: Future | None = None
    # Writes of this job's record, one at a time, each of the job as it is when it starts.
    record_lock: threading.Lock = field(default_factory=threading.Lock)
    progress_writing: bool = False
    next_progress_write: float = 0.0


class JobContext:
    """What a job's work sees: its ids, progress reporting and the cancel switch."""

    def __init__(self, board: "JobBoard", live: _LiveJob) -> None:
        self._board = board
        self._live = live
        self.scope = live.scope
        self.job_id = live.job.name[len(JOB_PREFIX) :]
        self._stage: jobs_pb2.JobStage = jobs_pb2.JOB_STAGE_UNSPECIFIED
        self._stage_started = time.monotonic()

    def _time_stage(self, stage: jobs_pb2.JobStage) -> None:
        """Observes how long the previous stage took, when a new one starts."""
        now = time.monotonic()
        if stage != self._stage:
            if self._stage:
                STAGE_SECONDS.labels(
                    jobs_pb2.JobKind.Name(self._live.job.kind).removeprefix("JOB_KIND_").lower(),
                    jobs_pb2.JobStage.Name(self._stage).removeprefix("JOB_STAGE_").lower(),
                ).observe(now - self._stage_started)
            self._stage, self._stage_started = stage, now

    def finish(self) -> None:
        self._time_stage(jobs_pb2.JOB_STAGE_DONE)

    def check_cancelled(self) -> None:
        if self._live.cancel.is_set():
            raise JobCancelled()

    def report(
        self,
        stage: jobs_pb2.JobStage,
        fraction: float,
        frames_done: int = 0,
        frames_total: int = 0,
    ) -> None:
        self.check_cancelled()
        self._time_stage(stage)
        self._board._update(
            self._live,
            lambda job: job.progress.CopyFrom(
                jobs_pb2.JobProgress(
                    stage=stage,
                    fraction=min(max(fraction, 0.0), 1.0),
                    frames_done=frames_done,
                    frames_total=frames_total,
                )
            ),
            persist=False,
        )


JobWork = Callable[[JobContext], jobs_pb2.JobResult]


class JobBoard:
    def __init__(self, store: ObjectStore, settings: OrchestratorSettings) -> None:
        self.store = store
        self.settings = settings
        self._live: dict[str, _LiveJob] = {}
        self._changed = threading.Condition()
        self._pool = ThreadPoolExecutor(settings.job_workers, thread_name_prefix="job")
        self._pending = 0
        self._stopping = threading.Event()
        # One progress write in flight for the whole board.
        self._progress_writer = ThreadPoolExecutor(1, thread_name_prefix="progress-record")

    def _record_key(self, scope: str, job_id: str) -> str:
        return f"{scope}/jobs/{job_id}.json"

    def _persist(self, live: _LiveJob, progress_only: bool = False) -> None:
        """Writes the job's record as the job is now; a progress write of a job that has
        ended writes nothing (the ended state was written, and the record may be deleted)."""
        with live.record_lock:
            job = self.snapshot(live)
            if progress_only and job.state in TERMINAL:
                return
            job.result.download_url = ""  # presigned URLs expire; made fresh on each read
            self.store.put_record(
                self.settings.records_bucket,
                self._record_key(live.scope, live.job.name[len(JOB_PREFIX) :]),
                {"scope": live.scope, "job": json_format.MessageToDict(job)},
            )

    def _update(
        self, live: _LiveJob, change: Callable[[jobs_pb2.Job], None], persist: bool = True
    ) -> None:
        """Applies a change and tells the watchers; `persist`: writes the record before
        returning, else (progress) leaves it to a background write when one is due."""
        with self._changed:
            change(live.job)
            live.job.update_time.GetCurrentTime()
            live.version += 1
            self._changed.notify_all()
            write_progress = (
                not persist
                and not live.progress_writing
                and time.monotonic() >= live.next_progress_write
            )
            live.progress_writing |= write_progress
        if write_progress:
            self._progress_writer.submit(self._write_progress, live)
        if persist:
            try:
                self._persist(live)
            except errors.RemindError as error:
                log.warning("job %s record not saved: %s", live.job.name, error)
                if live.job.state in TERMINAL:
                    self._persist_later(live)

    def _write_progress(self, live: _LiveJob) -> None:
        pause = self.settings.progress_persist_seconds
        try:
            self._persist(live, progress_only=True)
        except errors.RemindError as error:
            log.warning("job %s progress not saved: %s", live.job.name, error)
            pause = max(pause, PROGRESS_PAUSE_AFTER_FAILURE_SECONDS)
        finally:
            with self._changed:
                live.progress_writing = False
                live.next_progress_write = time.monotonic() + pause

    def _persist_later(self, live: _LiveJob) -> None:
        """An ended job's record must reach the store, or a restart would think it unfinished;
        keep trying while the store is away."""

        def retry() -> None:
            deadline = time.monotonic() + RECORD_RETRY_SECONDS
            while time.monotonic() < deadline:
                time.sleep(2.0)
                try:
                    self._persist(live)
                    log.info("job %s record saved after the store came back", live.job.name)
                    return
                except errors.RemindError:
                    continue
            log.error("job %s record could not be saved", live.job.name)

        threading.Thread(target=retry, daemon=True, name="record-retry").start()

    def submit(self, scope: str, job: jobs_pb2.Job, work: JobWork) -> jobs_pb2.Job:
        """Queues a job; refuses with RESOURCE_EXHAUSTED when too much work is pending."""
        with self._changed:
            if self._pending >= self.settings.max_pending_jobs:
                raise errors.TooLarge(
                    f"The server already has {self._pending} jobs pending; retry in "
                    f"{QUEUE_FULL_RETRY_SECONDS} s.",
                    retry_after_seconds=QUEUE_FULL_RETRY_SECONDS,
                )
            self._pending += 1
            JOBS_PENDING.set(self._pending)
        job.name = JOB_PREFIX + new_job_id()
        job.state = jobs_pb2.JOB_STATE_QUEUED
        job.progress.stage = jobs_pb2.JOB_STAGE_QUEUED
        job.create_time.GetCurrentTime()
        job.update_time.CopyFrom(job.create_time)
        live = _LiveJob(scope, job)
        try:
            self._persist(live)
        except errors.RemindError:
            with self._changed:
                self._pending -= 1
                JOBS_PENDING.set(self._pending)
            raise
        with self._changed:
            self._live[self._key(scope, job.name)] = live
        live.future = self._pool.submit(self._run, live, work)
        return self.snapshot(live)

    def _run(self, live: _LiveJob, work: JobWork) -> None:
        set_trace_id(live.job.name.removeprefix(JOB_PREFIX))  # this pool thread's current job
        try:
            if live.cancel.is_set():
                raise JobCancelled()
            self._update(live, lambda job: setattr(job, "state", jobs_pb2.JOB_STATE_RUNNING))
            context = JobContext(self, live)
            result = work(context)
            context.finish()

            def succeed(job: jobs_pb2.Job) -> None:
                job.state = jobs_pb2.JOB_STATE_SUCCEEDED
                job.result.CopyFrom(result)
                job.progress.stage = jobs_pb2.JOB_STAGE_DONE
                job.progress.fraction = 1.0

            self._update(live, succeed)
        except JobCancelled:
            if self._stopping.is_set():
                self._fail(
                    live, 14, "The job was interrupted by a server shutdown; submit it again."
                )
            else:
                self._update(live, lambda job: setattr(job, "state", jobs_pb2.JOB_STATE_CANCELLED))
        except errors.RemindError as error:
            log.info("job %s failed: %s", live.job.name, error)
            self._fail(live, status_for(error).value[0], str(error))
        except Exception:  # noqa: BLE001 - a job must always end
            reference = uuid.uuid4().hex[:12]
            log.exception("job %s crashed, reference %s", live.job.name, reference)
            self._fail(live, 13, f"Internal error (reference {reference}).")
        finally:
            with self._changed:
                self._pending -= 1
                JOBS_PENDING.set(self._pending)
                self._forget_old_jobs()

    def _forget_old_jobs(self) -> None:
        """Ended jobs stay in memory only while recent; their records stay in the store."""
        ended = [key for key, live in self._live.items() if live.job.state in TERMINAL]
        for key in ended[: max(0, len(ended) - MAX_ENDED_IN_MEMORY)]:
            del self._live[key]

    def _fail(self, live: _LiveJob, code: int, message: str) -> None:
        def fail(job: jobs_pb2.Job) -> None:
            job.state = jobs_pb2.JOB_STATE_FAILED
            job.error.CopyFrom(jobs_pb2.JobError(code=code, message=message))

        self._update(live, fail)

    def snapshot(self, live: _LiveJob) -> jobs_pb2.Job:
        with self._changed:
            copy = jobs_pb2.Job()
            copy.CopyFrom(live.job)
            return copy

    def _key(self, scope: str, name: str) -> str:
        return f"{scope}/{name}"

    def _load(self, scope: str, job_id: str) -> jobs_pb2.Job:
        try:
            record = self.store.get_record(
                self.settings.records_bucket, self._record_key(scope, job_id)
            )
        except errors.NotFound:
            raise errors.NotFound(f"Job jobs/{job_id} does not exist.") from None
        return json_format.ParseDict(record["job"], jobs_pb2.Job())

    def get(self, scope: str, name: str) -> jobs_pb2.Job:
        job_id = job_id_of(name)
        with self._changed:
            live = self._live.get(self._key(scope, name))
        return self.snapshot(live) if live else self._load(scope, job_id)

    def watch(
        self, scope: str, name: str, is_active: Callable[[], bool]
    ) -> Iterator[jobs_pb2.Job]:
        """Yields the job now and after every change, until it ends or the caller leaves."""
        job_id_of(name)
        with self._changed:
            live = self._live.get(self._key(scope, name))
        if live is None:
            yield self.get(scope, name)
            return
        seen = -1
        while is_active():
            with self._changed:
                if live.version == seen:
                    self._changed.wait(WATCH_POLL_SECONDS)
                    continue
                seen = live.version
                job = self.snapshot(live)
            yield job
            if job.state in TERMINAL:
                return

    def cancel(self, scope: str, name: str) -> jobs_pb2.Job:
        job = self.get(scope, name)
        if job.state in TERMINAL:
            raise errors.FailedPrecondition(
                f"Job {name} already ended ({jobs_pb2.JobState.Name(job.state)})."
            )
        with self._changed:
            live = self._live.get(self._key(scope, name))
        if live is None:
            return job
        live.cancel.set()
        if live.future is not None and live.future.cancel():
            # Still queued: it will never run, so it ends now and frees its place at once.
            with self._changed:
                self._pending -= 1
                JOBS_PENDING.set(self._pending)
            self._update(live, lambda job: setattr(job, "state", jobs_pb2.JOB_STATE_CANCELLED))
        return self.snapshot(live)

    def delete(self, scope: str, name: str) -> jobs_pb2.Job:
        """Removes an ended job's record (its result is the caller's to remove); returns it."""
        job = self.get(scope, name)
        if job.state not in TERMINAL:
            raise errors.FailedPrecondition(
                f"Job {name} has not ended: cancel it first, then delete it."
            )
        self.store.delete(self.settings.records_bucket, self._record_key(scope, job_id_of(name)))
        with self._changed:
            self._live.pop(self._key(scope, name), None)
        return job

    def end_all(self, scope: str, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Cancels every job of the scope that has not ended, and waits until each has."""
        with self._changed:
            running = [
                live
                for key, live in self._live.items()
                if key.startswith(f"{scope}/") and live.job.state not in TERMINAL
            ]
        for live in running:
            self.cancel(scope, live.job.name)
        futures = [live.future for live in running if live.future is not None]
        concurrent.futures.wait(futures, timeout=timeout)

    def record_count(self, scope: str) -> int:
        return len(self.store.list_keys(self.settings.records_bucket, f"{scope}/jobs/"))

    def forget(self, scope: str) -> None:
        """Drops the scope's jobs from memory (their records are gone from storage)."""
        with self._changed:
            for key in [key for key in self._live if key.startswith(f"{scope}/")]:
                del self._live[key]

    def list(self, scope: str, page_size: int, token: str) -> tuple[list[jobs_pb2.Job], str]:
        if page_size < 0:
            raise errors.InvalidInput(f"page_size must not be negative, got {page_size}.")
        page_size = min(page_size or 50, 200)
        prefix = f"{scope}/jobs/"
        after = f"{prefix}{_job_id_of_page_token(token)}.json" if token else ""
        if after and not self.store.exists(self.settings.records_bucket, after):
            raise errors.InvalidInput(BAD_PAGE_TOKEN)
        keys = sorted(self.store.list_keys(self.settings.records_bucket, prefix), reverse=True)
        if after:
            keys = [key for key in keys if key < after]
        page = keys[:page_size]
        jobs = [
            self.get(scope, JOB_PREFIX + key.rsplit("/", 1)[1].removesuffix(".json"))
            for key in page
        ]
        last_id = page[-1].rsplit("/", 1)[1].removesuffix(".json") if page else ""
        next_token = page_token(last_id) if len(keys) > page_size else ""
        return jobs, next_token

    def fail_interrupted(self) -> int:
        """At start-up: jobs left running by a previous process cannot resume; end them."""
        failed = 0
        for key in self.store.list_keys(self.settings.records_bucket, ""):
            if "/jobs/" not in key:
                continue
            record = self.store.get_record(self.settings.records_bucket, key)
            job = json_format.ParseDict(record["job"], jobs_pb2.Job())
            if job.state in TERMINAL:
                continue
            # Records of releases before people had scopes name their tenant.
            live = _LiveJob(record.get("scope") or record["tenant"], job)
            self._fail(live, 14, "The job was interrupted by a server restart; submit it again.")
            failed += 1
        return failed

    def shutdown(self) -> None:
        self._stopping.set()
        with self._changed:
            for live in self._live.values():
                live.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._progress_writer.shutdown(wait=False, cancel_futures=True)
