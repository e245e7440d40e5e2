"""Media jobs as long-running operations, run by any orchestrator replica and never lost.

A Create call stores what the job needs (its record, with the inputs as a spec, and the work
done at admission), then queues it on JetStream (job_queue.py). Any replica with a free slot
takes it: it takes the job's lease, marks the record running and runs the job's type. While it
runs, the worker renews its lease and marks the message in progress; if the worker dies or
stalls, the message is delivered again after the lease's time and another replica runs the job
from the start, reusing the work the job saved (see `JobContext.saved`). After
`job_max_attempts` starts whose worker died, the job fails with the reason.

The record in S3 is the job's truth. Every write of a running job's record is a
compare-and-set on the version the worker last wrote: a worker whose job was taken over (its
lease expired while it stalled) finds the record changed, stops, and keeps nothing it made.
Watchers on any replica see every change live (NATS), and the record when NATS is away.
Progress is written to the record in the background, at most once per
`progress_persist_seconds` per job, so a slow store never slows a job down.
"""

import base64
import binascii
import io
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from remind.v1 import job_service_pb2 as jobs_pb2

from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.job_queue import Delivery, JobQueue, Lease
from services.orchestrator.media_library import MediaLibrary
from services.shared import errors
from services.shared.grpc_status import status_for
from services.shared.observability import (
    JOB_LEASE_LOSSES,
    JOB_REDELIVERIES,
    JOBS_ENDED,
    JOBS_IN_PROGRESS,
    JOBS_RUNNING_HERE,
    JOBS_WAITING,
    STAGE_SECONDS,
)
from services.shared.storage import ObjectStore
from services.shared.tracing import set_trace_id

log = logging.getLogger(__name__)

JOB_PREFIX = "jobs/"
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
# How long a watcher waits for a live change before it checks its caller is still there, and
# how often it reads the record meanwhile (a change NATS did not carry is not missed for long),
# more often while NATS is away.
WATCH_POLL_SECONDS = 1.0
WATCH_RECORD_SECONDS = 30.0
WATCH_RECORD_SECONDS_WITHOUT_NATS = 3.0
# How long deleting a person's data waits for their running jobs to stop.
STOP_TIMEOUT_SECONDS = 60.0
# How long an ended job's record is retried while the store is unreachable.
RECORD_RETRY_SECONDS = 600.0
# After a progress write failed, the job's next one waits this long: the store is likely
# still away, and its failures take seconds (connection timeouts and retries).
PROGRESS_PAUSE_AFTER_FAILURE_SECONDS = 10.0
# A message whose record is missing (its Create call died between queueing and the record) is
# looked at this many times, a second apart, then dropped.
ORPHAN_DELIVERIES = 5
# How often the queue's depth is sampled for the metrics.
DEPTH_SAMPLE_SECONDS = 5.0


class JobCancelled(Exception):
    """Raised inside a job's work when its cancel switch is on."""


class LeaseLost(Exception):
    """The job's record changed under this worker: another one took the job over."""


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


def work_prefix(scope: str, job_id: str) -> str:
    """Where a job's saved work lives (in the results bucket) until the job ends."""
    return f"{scope}/{job_id}/work/"


@dataclass
class _LiveJob:
    """A job this replica is running."""

    scope: str
    job: jobs_pb2.Job
    spec: dict[str, Any]
    delivery: Delivery
    lease: Lease
    version: str  # of the record as this worker last wrote it
    attempt: int  # how many times a worker started the job, this one included
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False  # another worker took the job over
    handing_back: bool = False  # this replica is shutting down: the job goes to another
    # Writes of this job's record, one at a time, each of the job as it is when it starts.
    record_lock: threading.Lock = field(default_factory=threading.Lock)
    progress_writing: bool = False
    next_progress_write: float = 0.0

    @property
    def job_id(self) -> str:
        return self.job.name[len(JOB_PREFIX) :]


class JobContext:
    """What a job's work sees: its ids and inputs, its saved work, progress reporting and the
    cancel switch."""

    def __init__(self, board: "JobBoard", live: _LiveJob) -> None:
        self._board = board
        self._live = live
        self.scope = live.scope
        self.job_id = live.job_id
        self.kind = live.job.kind
        self.spec = live.spec
        self._stage: jobs_pb2.JobStage = jobs_pb2.JOB_STAGE_UNSPECIFIED
        self._stage_started = time.monotonic()

    def saved(self, name: str) -> bytes | None:
        """Work this job saved under `name` in an earlier delivery (or at admission)."""
        try:
            return self._board.store.get_bytes(
                self._board.settings.results_bucket, work_prefix(self.scope, self.job_id) + name
            )
        except errors.NotFound:
            return None

    def save(self, name: str, data: bytes) -> None:
        """Keeps a stage's output, so that a delivery after a crash need not redo it."""
        self.check_cancelled()
        self._board.save_work(self.scope, self.job_id, {name: data})

    def _time_stage(self, stage: jobs_pb2.JobStage) -> None:
        """Observes how long the previous stage took, when a new one starts."""
        now = time.monotonic()
        if stage != self._stage:
            if self._stage:
                STAGE_SECONDS.labels(
                    jobs_pb2.JobKind.Name(self.kind).removeprefix("JOB_KIND_").lower(),
                    jobs_pb2.JobStage.Name(self._stage).removeprefix("JOB_STAGE_").lower(),
                ).observe(now - self._stage_started)
            self._stage, self._stage_started = stage, now

    def finish(self) -> None:
        self._time_stage(jobs_pb2.JOB_STAGE_DONE)

    def check_cancelled(self) -> None:
        if self._live.cancel.is_set():
            raise LeaseLost() if self._live.lost else JobCancelled()

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


# Runs a job of any kind: picks its type by `context.kind`.
JobWork = Callable[[JobContext], jobs_pb2.JobResult]


class JobBoard:
    def __init__(
        self,
        store: ObjectStore,
        settings: OrchestratorSettings,
        jobs: JobQueue,
        media_library: MediaLibrary,
    ) -> None:
        self.store = store
        self.media_library = media_library
        self.settings = settings
        self.queue = jobs
        self._live: dict[str, _LiveJob] = {}  # by job id
        self._changed = threading.Condition()
        self._pool = ThreadPoolExecutor(settings.job_workers, thread_name_prefix="job")
        self._stopping = threading.Event()
        # One progress write in flight for the whole board.
        self._progress_writer = ThreadPoolExecutor(1, thread_name_prefix="progress-record")
        self._starting = 0  # deliveries handed to the pool and not yet running or dropped

    # Records.

    def _record_key(self, scope: str, job_id: str) -> str:
        return f"{scope}/jobs/{job_id}.json"

    def _record(
        self, scope: str, job: jobs_pb2.Job, spec: dict[str, Any], attempts: int = 0
    ) -> dict[str, Any]:
        """The stored record: the job, its inputs, and how many times a worker started it."""
        job.result.download_url = ""  # presigned URLs expire; made fresh on each read
        return {
            "scope": scope,
            "job": json_format.MessageToDict(job),
            "spec": spec,
            "attempts": attempts,
        }

    def _read(self, scope: str, job_id: str) -> tuple[dict[str, Any], jobs_pb2.Job, str]:
        """The record, its job and its version."""
        try:
            record, version = self.store.get_versioned_record(
                self.settings.records_bucket, self._record_key(scope, job_id)
            )
        except errors.NotFound:
            raise errors.NotFound(f"Job jobs/{job_id} does not exist.") from None
        return (
            record,
            json_format.ParseDict(record["job"], jobs_pb2.Job(), ignore_unknown_fields=True),
            version,
        )

    def _persist(self, live: _LiveJob, progress_only: bool = False) -> None:
        """Writes the job's record as the job is now, if no other worker wrote it since this
        one did; a progress write of a job that has ended writes nothing."""
        with live.record_lock:
            if live.lost:
                raise LeaseLost()
            job = self.snapshot(live)
            if progress_only and job.state in TERMINAL:
                return
            version = self.store.replace_record(
                self.settings.records_bucket,
                self._record_key(live.scope, live.job_id),
                self._record(live.scope, job, live.spec, live.attempt),
                live.version,
            )
            if version is None:
                self._lose(live)
                raise LeaseLost()
            live.version = version

    def _lose(self, live: _LiveJob) -> None:
        if not live.lost:
            log.warning("job %s was taken over by another worker; this one stops", live.job.name)
            JOB_LEASE_LOSSES.inc()
        live.lost = True
        live.cancel.set()

    def _update(
        self, live: _LiveJob, change: Callable[[jobs_pb2.Job], None], persist: bool = True
    ) -> None:
        """Applies a change and sends it to the watchers; `persist`: writes the record before
        returning (raising what the write raised), else (progress) leaves it to a background
        write when one is due."""
        with self._changed:
            change(live.job)
            live.job.update_time.GetCurrentTime()
            write_progress = (
                not persist
                and not live.progress_writing
                and time.monotonic() >= live.next_progress_write
            )
            live.progress_writing |= write_progress
            changed = live.job.SerializeToString()
        self.queue.publish_live(live.job_id, changed)
        if write_progress:
            self._progress_writer.submit(self._write_progress, live)
        if persist:
            self._persist(live)

    def _write_progress(self, live: _LiveJob) -> None:
        pause = self.settings.progress_persist_seconds
        try:
            self._persist(live, progress_only=True)
        except LeaseLost:
            pass  # the job's thread stops at its next step
        except errors.RemindError as error:
            log.warning("job %s progress not saved: %s", live.job.name, error)
            pause = max(pause, PROGRESS_PAUSE_AFTER_FAILURE_SECONDS)
        finally:
            with self._changed:
                live.progress_writing = False
                live.next_progress_write = time.monotonic() + pause

    def save_work(self, scope: str, job_id: str, work: dict[str, bytes]) -> None:
        for name, data in work.items():
            self.store.put(
                self.settings.results_bucket,
                work_prefix(scope, job_id) + name,
                io.BytesIO(data),
                len(data),
                "application/octet-stream",
            )

    def _drop_work(self, scope: str, job_id: str) -> None:
        """An ended job's saved work (its identity, the person's vocals) is personal data."""
        try:
            for key in self.store.list_keys(
                self.settings.results_bucket, work_prefix(scope, job_id)
            ):
                self.store.delete(self.settings.results_bucket, key)
        except errors.RemindError as error:
            log.warning("job %s work not removed yet (the sweeper will): %s", job_id, error)

    # Accepting.

    def submit(
        self,
        scope: str,
        job: jobs_pb2.Job,
        spec: dict[str, Any],
        work: dict[str, bytes],
    ) -> jobs_pb2.Job:
        """Stores a job and queues it. Refused (RESOURCE_EXHAUSTED) when the queue or the
        tenant's share is full, UNAVAILABLE when the queue is away; either way, nothing of
        the job stays stored."""
        job_id = new_job_id()
        job.name = JOB_PREFIX + job_id
        job.state = jobs_pb2.JOB_STATE_QUEUED
        job.progress.stage = jobs_pb2.JOB_STAGE_QUEUED
        job.create_time.GetCurrentTime()
        job.update_time.CopyFrom(job.create_time)
        key = self._record_key(scope, job_id)
        try:
            self.save_work(scope, job_id, work)
            # The record comes first, so a worker finds it; a message whose record is gone
            # (deleted, or never written) is dropped (see ORPHAN_DELIVERIES).
            if (
                self.store.replace_record(
                    self.settings.records_bucket, key, self._record(scope, job, spec), ""
                )
                is None
            ):
                raise errors.AlreadyExists(f"Job {job.name} exists already; submit it again.")
            self.queue.publish(scope, job_id)
        except errors.RemindError:
            self._forget_submitted(scope, job_id)
            raise
        return job

    def _forget_submitted(self, scope: str, job_id: str) -> None:
        try:
            self.store.delete(self.settings.records_bucket, self._record_key(scope, job_id))
        except errors.RemindError:
            log.warning("job %s: its record stays without a queued message", job_id)
        self._drop_work(scope, job_id)

    # Working: each replica pulls only as many jobs as it has free slots.

    def start_workers(self, work: JobWork) -> None:
        self.queue.on_cancel_request(self._cancel_here)
        for target, name in (
            (lambda: self._pull(work), "job-puller"),
            (self._keep_leases, "job-leases"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _running(self) -> int:
        with self._changed:
            return len(self._live)

    def _pull(self, work: JobWork) -> None:
        next_sample = 0.0
        while not self._stopping.is_set():
            free = self.settings.job_workers - self._running() - self._starting
            try:
                if time.monotonic() >= next_sample:
                    waiting, in_progress = self.queue.depth()
                    JOBS_WAITING.set(waiting)
                    JOBS_IN_PROGRESS.set(in_progress)
                    next_sample = time.monotonic() + DEPTH_SAMPLE_SECONDS
                if free <= 0:
                    time.sleep(0.2)
                    continue
                deliveries = self.queue.fetch(free, wait_seconds=1.0)
            except errors.Unavailable:
                time.sleep(1.0)  # NATS is away; the connection comes back by itself
                continue
            for delivery in deliveries:
                with self._changed:
                    self._starting += 1
                self._pool.submit(self._work_on, delivery, work)

    def _work_on(self, delivery: Delivery, work: JobWork) -> None:
        set_trace_id(delivery.job_id)  # this pool thread's current job
        try:
            if self._stopping.is_set():
                delivery.nak()  # fetched as this replica began to stop: another takes it now
                live = None
            else:
                live = self._take(delivery)
        except errors.RemindError as error:
            log.warning("job %s not taken now (%s); it comes back", delivery.job_id, error)
            self._quietly(delivery.nak, 1.0)
            live = None
        finally:
            with self._changed:
                self._starting -= 1
        if live is not None:
            try:
                self._run(live, work)
            finally:
                with self._changed:
                    del self._live[live.job_id]
                    JOBS_RUNNING_HERE.set(len(self._live))

    def _take(self, delivery: Delivery) -> _LiveJob | None:
        """The job of a delivery, leased to this worker and marked running; None when there is
        nothing to run now (it ended, another worker holds it, or it failed too often)."""
        try:
            record, job, version = self._read(delivery.scope, delivery.job_id)
        except errors.NotFound:
            if delivery.number < ORPHAN_DELIVERIES:
                delivery.nak(1.0)
            else:
                log.warning("job %s has no record; its message is dropped", delivery.job_id)
                delivery.ack()
            return None
        if job.state in TERMINAL:
            delivery.ack()
            return None
        lease = self.queue.take_lease(delivery.job_id)
        if not isinstance(lease, Lease):
            delivery.nak(lease + 0.5)
            return None
        # Starts are counted in the record, not deliveries: a delivery put back because the
        # job was busy elsewhere or the store was away is not a failure.
        attempt = record.get("attempts", 0) + 1
        live = _LiveJob(
            delivery.scope, job, record.get("spec", {}), delivery, lease, version, attempt - 1
        )
        if attempt > self.settings.job_max_attempts:
            self._end(live, self._failed(live, 13, self._too_many_deliveries(job)))
            return None
        live.attempt = attempt
        if attempt > 1:
            JOB_REDELIVERIES.inc()
        try:
            self._update(live, lambda job: setattr(job, "state", jobs_pb2.JOB_STATE_RUNNING))
        except LeaseLost:
            self._after_lost(live)
            return None
        with self._changed:
            self._live[live.job_id] = live
            JOBS_RUNNING_HERE.set(len(self._live))
        log.info("job %s running here (attempt %d)", job.name, attempt)
        if self.queue.cancel_requested(live.job_id):
            live.cancel.set()
        return live

    def _too_many_deliveries(self, job: jobs_pb2.Job) -> str:
        tries = self.settings.job_max_attempts
        stage = jobs_pb2.JobStage.Name(job.progress.stage).removeprefix("JOB_STAGE_").lower()
        where = stage.replace("_", " ")
        if job.progress.frames_total:
            where += f", frame {job.progress.frames_done} of {job.progress.frames_total}"
        return (
            f"The job failed {tries} times: the worker running it stopped each time (last at "
            f"{where}). It was not tried again; if it keeps failing, try another template."
        )

    def _run(self, live: _LiveJob, work: JobWork) -> None:
        try:
            context = JobContext(self, live)
            result = work(context)
            context.finish()
        except LeaseLost:
            self._after_lost(live)
        except JobCancelled:
            if live.handing_back:
                self._hand_back(live)
            else:
                self._end(live, lambda job: setattr(job, "state", jobs_pb2.JOB_STATE_CANCELLED))
        except errors.RemindError as error:
            log.info("job %s failed: %s", live.job.name, error)
            self._end(live, self._failed(live, status_for(error).value[0], str(error)))
        except Exception:  # noqa: BLE001 - a job must always end
            reference = uuid.uuid4().hex[:12]
            log.exception("job %s crashed, reference %s", live.job.name, reference)
            self._end(live, self._failed(live, 13, f"Internal error (reference {reference})."))
        else:

            def succeed(job: jobs_pb2.Job) -> None:
                job.state = jobs_pb2.JOB_STATE_SUCCEEDED
                job.result.CopyFrom(result)
                job.progress.stage = jobs_pb2.JOB_STAGE_DONE
                job.progress.fraction = 1.0

            if not self._end(live, succeed):
                # Another worker ended or runs the job: this worker's result is not the job's.
                self._quietly(self.media_library.delete, live.scope, result.media)

    def _failed(self, live: _LiveJob, code: int, message: str) -> Callable[[jobs_pb2.Job], None]:
        def fail(job: jobs_pb2.Job) -> None:
            job.state = jobs_pb2.JOB_STATE_FAILED
            job.error.CopyFrom(jobs_pb2.JobError(code=code, message=message))

        return fail

    def _end(self, live: _LiveJob, change: Callable[[jobs_pb2.Job], None]) -> bool:
        """Writes the job's end, then acknowledges its message. False when the end was not
        written: another worker owns the job now, or the store stayed away (then the message
        comes back and the job runs again)."""
        self._update(live, change, persist=False)
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        while True:
            try:
                self._persist(live)
                break
            except LeaseLost:
                self._after_lost(live)
                return False
            except errors.RemindError as error:
                if time.monotonic() > deadline:
                    log.error("job %s end not saved: %s; it will run again", live.job.name, error)
                    return False
                log.warning("job %s end not saved yet: %s", live.job.name, error)
                time.sleep(2.0)
        JOBS_ENDED.labels(jobs_pb2.JobState.Name(live.job.state)).inc()
        self._drop_work(live.scope, live.job_id)
        # NATS away: the message comes back once it is, and its record says the job ended.
        self._quietly(live.delivery.ack)
        self._quietly(self.queue.release_lease, live.job_id, live.lease)
        return True

    def _after_lost(self, live: _LiveJob) -> None:
        """The record changed under this worker: if the job ended (cancelled while queued,
        say), its message is done with; else the other worker has it."""
        live.lost = True
        live.cancel.set()
        try:
            _, job, _ = self._read(live.scope, live.job_id)
        except errors.RemindError:
            return
        if job.state in TERMINAL:
            self._quietly(live.delivery.ack)

    def _hand_back(self, live: _LiveJob) -> None:
        """Shutting down: the job goes back to the queue at once, for another replica."""
        log.info("job %s handed back for another replica", live.job.name)
        self._quietly(self.queue.release_lease, live.job_id, live.lease)
        self._quietly(live.delivery.nak)

    @staticmethod
    def _quietly(action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except errors.RemindError as error:
            log.warning("%s not done: %s", getattr(action, "__name__", "step"), error)

    def _keep_leases(self) -> None:
        """Renews the lease of every job running here, and marks it in progress, well within
        the lease's time; a job whose lease another worker took stops."""
        while not self._stopping.wait(self.settings.job_lease_seconds / 4):
            with self._changed:
                running = list(self._live.values())
            for live in running:
                try:
                    live.delivery.in_progress()
                    lease = self.queue.renew_lease(live.job_id, live.lease)
                    if lease is None:
                        self._lose(live)
                        continue
                    live.lease = lease
                    if self.queue.cancel_requested(live.job_id):
                        live.cancel.set()
                except errors.Unavailable as error:
                    log.debug("lease of %s not renewed: %s", live.job_id, error)

    def _cancel_here(self, job_id: str) -> None:
        with self._changed:
            live = self._live.get(job_id)
        if live is not None:
            live.cancel.set()

    # Reading.

    def snapshot(self, live: _LiveJob) -> jobs_pb2.Job:
        with self._changed:
            copy = jobs_pb2.Job()
            copy.CopyFrom(live.job)
            return copy

    def get(self, scope: str, name: str) -> jobs_pb2.Job:
        job_id = job_id_of(name)
        with self._changed:
            live = self._live.get(job_id)
        if live is not None and live.scope == scope:
            return self.snapshot(live)
        return self._read(scope, job_id)[1]

    def watch(self, scope: str, name: str, is_active: Callable[[], bool]) -> Iterator[jobs_pb2.Job]:
        """Yields the job now and after every change, wherever it runs, until it ends or the
        caller leaves. It subscribes before it reads the job, so no change falls between."""
        job_id = job_id_of(name)
        try:
            changes, end = self.queue.subscribe_live(job_id)
            record_seconds = WATCH_RECORD_SECONDS
        except errors.Unavailable:
            changes, end = queue.Queue(), lambda: None  # the record alone, read as it changes
            record_seconds = WATCH_RECORD_SECONDS_WITHOUT_NATS
        try:
            last = self.get(scope, name)
            yield last
            # Spread out, so that many watchers do not read the store at the same moment.
            read_record_at = time.monotonic() + record_seconds * random.uniform(0.5, 1.0)
            while last.state not in TERMINAL and is_active():
                try:
                    job = jobs_pb2.Job.FromString(changes.get(timeout=WATCH_POLL_SECONDS))
                except queue.Empty:
                    if time.monotonic() < read_record_at:
                        continue
                    read_record_at = time.monotonic() + record_seconds
                    try:
                        job = self._read(scope, job_id)[1]
                    except errors.Unavailable:
                        continue
                if job.update_time.ToNanoseconds() > last.update_time.ToNanoseconds():
                    last = job
                    yield job
        finally:
            end()

    def cancel(self, scope: str, name: str) -> jobs_pb2.Job:
        """A queued job ends at once; a running one is asked to stop, wherever it runs."""
        job_id = job_id_of(name)
        while True:
            record, job, version = self._read(scope, job_id)
            if job.state in TERMINAL:
                raise errors.FailedPrecondition(
                    f"Job {name} already ended ({jobs_pb2.JobState.Name(job.state)})."
                )
            if job.state != jobs_pb2.JOB_STATE_QUEUED:
                self.queue.request_cancel(job_id)
                return job
            job.state = jobs_pb2.JOB_STATE_CANCELLED
            job.update_time.GetCurrentTime()
            written = self.store.replace_record(
                self.settings.records_bucket,
                self._record_key(scope, job_id),
                self._record(scope, job, record.get("spec", {}), record.get("attempts", 0)),
                version,
            )
            if written is not None:
                JOBS_ENDED.labels(jobs_pb2.JobState.Name(job.state)).inc()
                self.queue.publish_live(job_id, job.SerializeToString())
                self._drop_work(scope, job_id)
                try:
                    self.queue.remove(scope, job_id)
                except errors.Unavailable:
                    pass  # the first worker that gets its message drops it
                return job

    def delete(self, scope: str, name: str) -> jobs_pb2.Job:
        """Removes an ended job's record (its result is the caller's to remove); returns it."""
        job = self.get(scope, name)
        if job.state not in TERMINAL:
            raise errors.FailedPrecondition(
                f"Job {name} has not ended: cancel it first, then delete it."
            )
        job_id = job_id_of(name)
        self._drop_work(scope, job_id)
        self.store.delete(self.settings.records_bucket, self._record_key(scope, job_id))
        return job

    def end_all(self, scope: str, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Cancels every job of the scope that has not ended, and waits until each has."""
        deadline = time.monotonic() + timeout
        asked: set[str] = set()
        while True:
            waiting = [job for job in self._scope_jobs(scope) if job.state not in TERMINAL]
            if not waiting or time.monotonic() > deadline:
                return
            for job in waiting:
                if job.name not in asked:
                    asked.add(job.name)
                    try:
                        self.cancel(scope, job.name)
                    except errors.FailedPrecondition:
                        pass  # ended meanwhile
            time.sleep(0.5)

    def _scope_jobs(self, scope: str) -> list[jobs_pb2.Job]:
        jobs = []
        for key in self.store.list_keys(self.settings.records_bucket, f"{scope}/jobs/"):
            try:
                jobs.append(self._read(scope, key.rsplit("/", 1)[1].removesuffix(".json"))[1])
            except errors.NotFound:
                continue
        return jobs

    def record_count(self, scope: str) -> int:
        return len(self.store.list_keys(self.settings.records_bucket, f"{scope}/jobs/"))

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

    def shutdown(self) -> None:
        """Stops taking jobs; lets running ones finish within `job_finish_seconds`, then hands
        the rest back to the queue for another replica."""
        self._stopping.set()
        deadline = time.monotonic() + self.settings.job_finish_seconds
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.2)
        with self._changed:
            for live in self._live.values():
                live.handing_back = True
                live.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._progress_writer.shutdown(wait=False, cancel_futures=True)
        self.queue.close()


def worker_name() -> str:
    """This replica's name in leases and logs: host, process and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
