"""Loads a model service's engines once at start-up and resolves engine names.

Every model service has the same needs: several engines picked by name, `auto` meaning the
best engine that is ready, and a clear reason for each engine that is not.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.shared import errors
from services.shared.engines import Engine
from services.shared.observability import ENGINE_READY

log = logging.getLogger(__name__)

EngineT = TypeVar("EngineT", bound=Engine)
AUTO = "auto"


@dataclass(frozen=True)
class EngineStatus:
    name: str
    ready: bool
    detail: str
    device: str


class EngineCatalog(Generic[EngineT]):
    """`preference` lists engine names best first; `auto` takes the first that loaded."""

    def __init__(
        self,
        factories: dict[str, Callable[[], EngineT]],
        preference: Sequence[str],
        enabled: Sequence[str] | None = None,
    ) -> None:
        self._factories = factories
        self._preference = [name for name in preference if name in factories]
        self._enabled = list(enabled) if enabled else list(self._preference)
        self._engines: dict[str, EngineT] = {}
        self._status: dict[str, EngineStatus] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        for name in self._enabled:
            self._load(name)

    def _load(self, name: str) -> None:
        if name not in self._factories:
            raise errors.InvalidInput(
                f"Unknown engine {errors.shown(name)}; known engines: {', '.join(self._factories)}"
            )
        try:
            engine = self._factories[name]()
            engine.load()
        except Exception as error:  # noqa: BLE001 - an engine that cannot load is reported, not fatal
            log.warning("engine %s is not ready: %s", name, error)
            self._status[name] = EngineStatus(name, False, str(error), "-")
            return
        self._engines[name] = engine
        device = engine.device
        self._status[name] = EngineStatus(name, True, "", device)
        ENGINE_READY.labels(name, device).set(1)
        log.info("engine %s ready on %s", name, device)

    def resolve(self, name: str) -> EngineT:
        """Returns the named engine, or the best ready one for '' and 'auto'."""
        name = name.strip().lower()
        if name in ("", AUTO):
            for candidate in self._preference:
                if candidate in self._engines:
                    return self._engines[candidate]
            raise errors.EngineNotReady("No engine is ready on this server.")
        if name not in self._factories:
            raise errors.InvalidInput(
                f"Unknown engine {errors.shown(name)}; "
                f"known engines: {', '.join(self._factories)}, auto"
            )
        if name not in self._engines:
            status = self._status.get(name)
            reason = status.detail if status else "it is not enabled on this server"
            raise errors.EngineNotReady(f"Engine {errors.shown(name)} cannot serve: {reason}")
        return self._engines[name]

    def default_name(self) -> str:
        for candidate in self._preference:
            if candidate in self._engines:
                return candidate
        return ""

    def statuses(self) -> list[EngineStatus]:
        return [
            self._status.get(name, EngineStatus(name, False, "not enabled", "-"))
            for name in self._factories
        ]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
