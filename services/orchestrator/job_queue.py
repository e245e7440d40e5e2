"""The jobs' control plane on NATS JetStream, shared by every orchestrator replica.

- Stream `REMIND_JOBS` (subjects `remind.jobs.<tenant>`, file storage, work-queue retention):
  one message per accepted job, kept until a worker acknowledges its end. Its limits are the
  back-pressure: at most `max_queued_jobs` jobs queued or running in all, and at most
  `max_jobs_per_tenant` per tenant (per subject, new messages refused), so one tenant cannot
  take every place. A message's id is its job's id: a publish retried is stored once.
- Consumer `workers` (durable, pull, explicit acks): each replica fetches only as many jobs as
  it has free slots. A worker marks its jobs in progress every few seconds; a job not marked
  within `ack_wait` (the worker was killed, stalled or cut off) is delivered again, to any
  replica.
- Key-value bucket `REMIND_JOB_LEASES`: `lease.<job>` names the one worker that may act on a
  job and until when, changed only by compare-and-set on its revision (a worker whose lease was
  taken over learns it at its next renewal and stops); `cancel.<job>` asks the worker running a
  job to stop.
- Subjects `remind.live.<job>` (core NATS, not stored): a running job's every change, for
  WatchJob on any replica.

S3 keeps what must outlive NATS: job records, inputs, the work a job saved and its result.

nats-py is asyncio-only and the gRPC server is threaded: one event loop runs in its own
thread, and the methods here are plain blocking calls into it.
"""

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from services.orchestrator.config import OrchestratorSettings
from services.shared import errors

log = logging.getLogger(__name__)

STREAM = "REMIND_JOBS"
CONSUMER = "workers"
LEASES = "REMIND_JOB_LEASES"
JOB_SUBJECTS = "remind.jobs"
LIVE_SUBJECTS = "remind.live"
# How long a blocking call waits for NATS before it counts as away.
CALL_SECONDS = 5.0
# JetStream's error codes for a stream at its message limit, in all or for one subject.
STREAM_FULL, SUBJECT_FULL = 10054, 10077
QUEUE_FULL_RETRY_SECONDS = 30

T = TypeVar("T")


def tenant_subject(scope: str) -> str:
    """The subject of a scope's tenant (a scope is a tenant or `{tenant}/people/{person}`, see
    auth.Owner), as a token: tenant names may hold characters subjects may not."""
    tenant = scope.split("/", 1)[0]
    return f"{JOB_SUBJECTS}.{hashlib.sha256(tenant.encode()).hexdigest()[:24]}"


UNREACHABLE = "The job queue cannot be reached right now; nothing was stored. Retry in a minute."


@dataclass(frozen=True)
class Lease:
    worker: str
    revision: int


class Delivery:
    """One delivery of a job's message to this replica."""

    def __init__(self, jobs: "JobQueue", message: Msg) -> None:
        self._jobs = jobs
        self._message = message
        body = json.loads(message.data)
        self.scope: str = body["scope"]
        self.job_id: str = body["job_id"]
        self.number: int = message.metadata.num_delivered

    def in_progress(self) -> None:
        self._jobs.call(self._message.in_progress())

    def ack(self) -> None:
        self._jobs.call(self._message.ack_sync(timeout=CALL_SECONDS))

    def nak(self, delay_seconds: float = 0.0) -> None:
        self._jobs.call(self._message.nak(delay=delay_seconds or None))


class JobQueue:
    def __init__(self, settings: OrchestratorSettings, worker: str) -> None:
        self.settings = settings
        self.worker = worker
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="nats", daemon=True).start()
        self._connection: Any = None
        self._subscription: Any = None
        self._lease_bucket: Any = None  # the KeyValue handle, made once (making it asks NATS)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_SECONDS) -> T:
        """Runs a coroutine on the NATS loop; NATS away or slow raises errors.Unavailable."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise errors.Unavailable(UNREACHABLE) from None
        except (nats.errors.ConnectionClosedError, nats.errors.NoServersError) as error:
            raise errors.Unavailable(UNREACHABLE) from error
        except nats.errors.TimeoutError:
            raise errors.Unavailable(UNREACHABLE) from None

    def connect(self) -> None:
        """Connects (retrying for ever in the background after the first success), then
        makes the stream, consumer and bucket if they do not exist."""
        settings = self.settings

        async def quiet(error: Exception) -> None:
            log.debug("nats: %s", error)

        async def disconnected() -> None:
            log.warning("job queue disconnected; reconnecting")

        async def reconnected() -> None:
            log.warning("job queue reconnected")

        async def open_connection() -> Any:
            return await nats.connect(
                settings.nats_url,
                user=settings.nats_user or None,
                password=settings.nats_password or None,
                name=self.worker,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=quiet,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            )

        self._connection = self.call(open_connection(), timeout=30)
        self.call(self._declare())

    async def _declare(self) -> None:
        settings = self.settings
        stream = await self._stream()
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{JOB_SUBJECTS}.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.nats_replicas,
            max_msgs=settings.max_queued_jobs,
            max_msgs_per_subject=settings.max_jobs_per_tenant,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            duplicate_window=120,
        )
        try:
            await stream.add_stream(config)
        except nats.js.errors.BadRequestError:
            await stream.update_stream(config)  # made by an earlier release: take today's limits
        await stream.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.job_lease_seconds,
                # Redelivered for as long as it takes: jobs.py counts starts and ends a job.
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        self._lease_bucket = await stream.create_key_value(
            KeyValueConfig(
                bucket=LEASES,
                history=1,
                storage=StorageType.FILE,
                replicas=settings.nats_replicas,
                ttl=7 * 24 * 3600,  # leases and cancel requests of long-ended jobs go away
            )
        )

    async def _stream(self) -> Any:
        return self._connection.jetstream(timeout=CALL_SECONDS)

    # Producing.

    def publish(self, scope: str, job_id: str) -> None:
        """Queues a job; refuses when the queue or the tenant's share of it is full."""
        body = json.dumps({"scope": scope, "job_id": job_id}).encode()

        async def publish() -> None:
            stream = await self._stream()
            await stream.publish(
                tenant_subject(scope), body, headers={"Nats-Msg-Id": job_id}, timeout=CALL_SECONDS
            )

        try:
            self.call(publish())
        except nats.js.errors.ServiceUnavailableError as error:
            retry = {"retry_after_seconds": QUEUE_FULL_RETRY_SECONDS}
            if error.err_code == SUBJECT_FULL:
                raise errors.TooLarge(
                    f"Your account already has {self.settings.max_jobs_per_tenant} jobs queued "
                    f"or running; retry in {QUEUE_FULL_RETRY_SECONDS} s, when some have ended.",
                    **retry,
                ) from None
            if error.err_code == STREAM_FULL:
                raise errors.TooLarge(
                    f"The server already has {self.settings.max_queued_jobs} jobs queued or "
                    f"running; retry in {QUEUE_FULL_RETRY_SECONDS} s.",
                    **retry,
                ) from None
            raise errors.Unavailable(UNREACHABLE) from error
        except nats.errors.NoRespondersError:
            raise errors.Unavailable(UNREACHABLE) from None

    def remove(self, scope: str, job_id: str) -> None:
        """Takes a job that will not run (cancelled while queued) off the queue, so that its
        place is free at once. Looks through the tenant's messages only (a few dozen at most)."""
        subject = tenant_subject(scope)

        async def remove() -> None:
            stream = await self._stream()
            sequence = 1
            # A message gone meanwhile (a worker found the job ended and acknowledged it) is
            # what removing wants: the server's "no message found" ends the search.
            try:
                while True:
                    message = await stream.get_msg(STREAM, seq=sequence, subject=subject, next=True)
                    if message.data and json.loads(message.data).get("job_id") == job_id:
                        await stream.delete_msg(STREAM, message.seq)
                        return
                    sequence = message.seq + 1
            except nats.js.errors.APIError:
                return

        self.call(remove())

    # Consuming.

    def fetch(self, most: int, wait_seconds: float) -> list[Delivery]:
        """Up to `most` jobs, waiting at most `wait_seconds` for the first."""

        async def fetch() -> list[Msg]:
            if self._subscription is None:
                stream = await self._stream()
                self._subscription = await stream.pull_subscribe_bind(CONSUMER, STREAM)
            try:
                return await self._subscription.fetch(most, timeout=wait_seconds)
            except nats.errors.TimeoutError:
                return []

        messages = self.call(fetch(), timeout=wait_seconds + CALL_SECONDS)
        return [Delivery(self, message) for message in messages]

    def depth(self) -> tuple[int, int]:
        """(jobs waiting for a worker, jobs being worked on) across all replicas."""

        async def info() -> Any:
            return await (await self._stream()).consumer_info(STREAM, CONSUMER)

        consumer = self.call(info())
        return consumer.num_pending, consumer.num_ack_pending

    # Leases: who may act on a job.

    async def _leases(self) -> Any:
        return self._lease_bucket

    def take_lease(self, job_id: str) -> Lease | float:
        """This worker's lease on the job, or how many seconds another worker's has left."""
        key = f"lease.{job_id}"
        seconds = self.settings.job_lease_seconds

        async def take() -> Lease | float:
            leases = await self._leases()
            value = json.dumps({"worker": self.worker, "until": time.time() + seconds}).encode()
            try:
                entry = await leases.get(key)
            except nats.js.errors.KeyNotFoundError:
                try:
                    return Lease(self.worker, await leases.create(key, value))
                except nats.js.errors.KeyWrongLastSequenceError:
                    return seconds  # another worker took it just now
            held = json.loads(entry.value or b"{}")
            left = float(held.get("until", 0)) - time.time()
            if held.get("worker") not in (None, self.worker) and left > 0:
                return left
            try:
                return Lease(self.worker, await leases.update(key, value, last=entry.revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                return seconds

        return self.call(take())

    def renew_lease(self, job_id: str, lease: Lease) -> Lease | None:
        """The lease extended, or None when another worker took it over (stop at once)."""
        value = json.dumps(
            {"worker": self.worker, "until": time.time() + self.settings.job_lease_seconds}
        ).encode()

        async def renew() -> Lease | None:
            leases = await self._leases()
            try:
                revision = await leases.update(f"lease.{job_id}", value, last=lease.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            return Lease(self.worker, revision)

        return self.call(renew())

    def release_lease(self, job_id: str, lease: Lease) -> None:
        """Gives the job up, so that the next worker need not wait for the lease to run out."""

        async def release() -> None:
            leases = await self._leases()
            try:
                await leases.delete(f"lease.{job_id}", last=lease.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # taken over already

        self.call(release())

    # Cancelling and live progress.

    def request_cancel(self, job_id: str) -> None:
        async def cancel() -> None:
            await (await self._leases()).put(f"cancel.{job_id}", b"1")

        self.call(cancel())

    def cancel_requested(self, job_id: str) -> bool:
        async def requested() -> bool:
            try:
                await (await self._leases()).get(f"cancel.{job_id}")
            except nats.js.errors.KeyNotFoundError:
                return False
            return True

        return self.call(requested())

    def on_cancel_request(self, cancel: Callable[[str], None]) -> None:
        """Calls `cancel(job_id)` (quickly: on the NATS loop) for every cancel request."""
        prefix = f"$KV.{LEASES}.cancel."

        async def on_request(message: Msg) -> None:
            cancel(message.subject.removeprefix(prefix))

        self.call(self._connection.subscribe(f"{prefix}*", cb=on_request))

    def publish_live(self, job_id: str, job: bytes) -> None:
        """Sends a running job's change to its watchers; never waits, never fails the job."""

        async def send() -> None:
            try:
                await self._connection.publish(f"{LIVE_SUBJECTS}.{job_id}", job)
            except nats.errors.Error as error:
                log.debug("live update of %s not sent: %s", job_id, error)

        asyncio.run_coroutine_threadsafe(send(), self._loop)

    def subscribe_live(self, job_id: str) -> tuple["queue.Queue[bytes]", Callable[[], None]]:
        """A queue of the job's live changes, and the function that ends the subscription."""
        changes: queue.Queue[bytes] = queue.Queue()

        async def on_change(message: Msg) -> None:
            changes.put(message.data)

        subscription = self.call(
            self._connection.subscribe(f"{LIVE_SUBJECTS}.{job_id}", cb=on_change)
        )

        def end() -> None:
            try:
                self.call(subscription.unsubscribe())
            except (errors.Unavailable, nats.errors.Error):
                pass  # the connection is gone, and the subscription with it

        return changes, end

    def close(self) -> None:
        """Closes the connection (what this replica published was acknowledged already)."""
        if self._connection is not None:
            try:
                self.call(self._connection.close())
            except (errors.Unavailable, nats.errors.Error):
                pass
