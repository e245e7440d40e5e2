"""Server bootstrap shared by every service: health, reflection, metrics, status mapping,
message limits and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.shared.admission import StreamAdmission, StreamCap, caller_address, trusted_networks
from services.shared.engine_catalog import EngineCatalog
from services.shared.errors import Misconfigured
from services.shared.grpc_status import StatusInterceptor
from services.shared.observability import (
    MetricsInterceptor,
    configure_logging,
    start_metrics_endpoint,
    watch_gpu_memory,
)
from services.shared.scratch import ScratchSettings, own_scratch_folder
from services.shared.settings import ModelServerSettings, ServerSettings
from services.shared.tracing import TraceInterceptor

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=ModelServerSettings)


def message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class RunningServer:
    """A started gRPC server with its health service, stoppable from any thread."""

    def __init__(
        self,
        server: grpc.Server,
        health_servicer: health.HealthServicer,
        service_names: list[str],
        port: int,
        grace: float,
    ) -> None:
        self.server = server
        self.health = health_servicer
        self.service_names = service_names
        self.port = port
        self.grace = grace
        self.on_stop: list[Callable[[], None]] = []

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self) -> None:
        """Reports NOT_SERVING, lets in-flight calls finish within the grace, then stops."""
        self.set_serving(False)
        self.server.stop(self.grace).wait()
        for callback in self.on_stop:
            callback()

    def wait(self) -> None:
        self.server.wait_for_termination()


@dataclass(frozen=True)
class GrpcService:
    """A service of the generated code: how a servicer joins a server, and its full name."""

    add_servicer: Callable[[Any, grpc.Server], None]
    full_name: str

    @classmethod
    def of(cls, pb2_grpc: ModuleType, pb2: ModuleType, name: str) -> GrpcService:
        """`name` ("FaceSwapService") as grpcio-tools generates it into the two modules."""
        add_servicer = getattr(pb2_grpc, f"add_{name}Servicer_to_server")
        return cls(add_servicer, pb2.DESCRIPTOR.services_by_name[name].full_name)


def stream_caps(settings: ServerSettings) -> list[StreamCap]:
    """The stream caps of every server: in all, and per caller address."""
    proxies = trusted_networks(settings.trusted_proxies)
    return [
        StreamCap("in all", settings.max_streams, lambda _context: ""),
        StreamCap(
            "per caller address",
            settings.max_streams_per_address,
            lambda context: caller_address(context, proxies),
        ),
    ]


def start_server(
    settings: ServerSettings,
    servicers: Iterable[tuple[Any, GrpcService]],
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    more_stream_caps: Iterable[StreamCap] = (),
    slow_methods: Iterable[str] = (),
) -> RunningServer:
    """Starts a server with its servicers, each paired with the generated service it serves.
    `slow_methods` ("/package.Service/Method"): unary calls that may take seconds, which may
    hold at most half of the unary threads."""
    admission = StreamAdmission(
        [*stream_caps(settings), *more_stream_caps], slow_methods, settings.max_workers // 2
    )
    server = grpc.server(
        # Streams are capped at `max_streams`, so `max_workers` threads stay for unary calls.
        futures.ThreadPoolExecutor(max_workers=settings.max_streams + settings.max_workers),
        # Outermost first: metrics see the final status, which StatusInterceptor sets for any
        # domain error raised by the handler or by the interceptors after it (e.g. auth).
        # Admission comes last: a caller auth refuses holds no stream place.
        interceptors=[
            MetricsInterceptor(),
            TraceInterceptor(),
            StatusInterceptor(),
            *interceptors,
            admission,
        ],
        options=message_options(settings.max_message_bytes),
        # Beyond this, unary calls wait for a thread no longer but are refused at once.
        maximum_concurrent_rpcs=settings.max_streams + settings.max_workers * 4,
    )
    service_names = []
    for servicer, service in servicers:
        service.add_servicer(servicer, server)
        service_names.append(service.full_name)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.host}:{settings.port}")
    server.start()
    start_metrics_endpoint(settings.metrics_port, settings.host)
    running = RunningServer(
        server, health_servicer, service_names, port, settings.shutdown_grace_seconds
    )
    running.set_serving(True)
    log.info("listening on %s:%d", settings.host, port)
    return running


def start_model_server(
    settings: ModelServerSettings,
    factories: dict[str, Callable[[], Any]],
    make_servicer: Callable[[EngineCatalog], Any],
    service: GrpcService,
) -> RunningServer:
    """Starts a model service: its engines loaded once (best first, as `factories` lists them),
    its servicer, and everything `start_server` adds; the engines are released on stop."""
    engines = EngineCatalog(factories, tuple(factories), settings.enabled_engines())
    engines.load_all()
    running = start_server(settings, [(make_servicer(engines), service)])
    running.on_stop.append(engines.close)
    watch_gpu_memory()
    return running


def model_server(
    service: GrpcService,
    engine_factories: Callable[[SettingsT], dict[str, Callable[[], Any]]],
    servicer_type: Callable[..., Any],
) -> Callable[[SettingsT], RunningServer]:
    """The `start(settings)` of a model service whose servicer is built as
    `servicer_type(engines, settings=settings)`."""

    def start(settings: SettingsT) -> RunningServer:
        servicer = partial(servicer_type, settings=settings)
        return start_model_server(settings, engine_factories(settings), servicer, service)

    return start


def serve(name: str, start: Callable[[], RunningServer]) -> None:
    """A service's main: JSON logs named `name`, its own temporary folder (scratch.py), the
    server started, then serving until SIGTERM or SIGINT, when it shuts down gracefully."""
    configure_logging(name)
    with own_scratch_folder(name, ScratchSettings.load().root_path()):
        _serve(name, start)


def _serve(name: str, start: Callable[[], RunningServer]) -> None:
    try:
        running = start()
    except Misconfigured as error:
        log.critical("%s cannot start: %s", name, error)
        raise SystemExit(f"{name} cannot start: {error}") from None
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    running.stop()
