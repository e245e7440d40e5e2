"""Structured logs and Prometheus metrics shared by every service."""

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.shared.handlers import Continuation, status_code, within
from services.shared.tracing import current_trace_id

RPCS = Counter("remind_rpcs_total", "RPCs handled", ["service", "method", "code"])
RPC_SECONDS = Histogram(
    "remind_rpc_seconds",
    "RPC wall time, streams included",
    ["service", "method"],
    buckets=(0.005, 0.02, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
FRAMES = Counter("remind_frames_total", "Frames processed", ["service", "engine"])
ENGINE_READY = Gauge(
    "remind_engine_ready", "1 when the engine loaded and can serve", ["engine", "device"]
)
JOBS_RUNNING_HERE = Gauge("remind_jobs_running", "Jobs this orchestrator replica is running")
# The job queue as every replica sees it (JetStream's consumer), sampled by each replica.
JOBS_WAITING = Gauge("remind_jobs_waiting", "Jobs accepted and not yet taken by any worker")
JOBS_IN_PROGRESS = Gauge("remind_jobs_in_progress", "Jobs taken by a worker, in all replicas")
JOBS_ENDED = Counter("remind_jobs_ended_total", "Jobs this replica ended, by state", ["state"])
JOB_REDELIVERIES = Counter(
    "remind_job_redeliveries_total", "Jobs taken up again after their worker stopped"
)
JOB_LEASE_LOSSES = Counter(
    "remind_job_lease_losses_total", "Jobs this replica stopped because another took them over"
)
STAGE_SECONDS = Histogram(
    "remind_job_stage_seconds",
    "Wall time of each job stage",
    ["kind", "stage"],
    buckets=(0.05, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)


def watch_gpu_memory() -> None:
    """Exports the GPU memory torch holds, on machines that have CUDA."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        Gauge("remind_gpu_memory_bytes", "GPU memory allocated by torch").set_function(
            torch.cuda.memory_allocated
        )


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def start_metrics_endpoint(port: int, host: str) -> None:
    if port:
        start_http_server(port, addr=host)


def _split_method(full_method: str) -> tuple[str, str]:
    _, service, method = full_method.split("/", 2)
    return service.rsplit(".", 1)[-1], method


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts RPCs by final status code and times them, streams included."""

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        service, method = _split_method(handler_call_details.method)

        @contextmanager
        def measured(context: grpc.ServicerContext) -> Iterator[None]:
            started = time.monotonic()
            try:
                yield
            finally:
                code = status_code(context) or grpc.StatusCode.OK
                RPCS.labels(service, method, code.name).inc()
                RPC_SECONDS.labels(service, method).observe(time.monotonic() - started)

        return within(continuation(handler_call_details), measured)
