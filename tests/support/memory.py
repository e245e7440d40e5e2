"""How much memory a running server really takes for one request, read from /proc.

A server's own peak comes from VmHWM, reset before the request through /proc/PID/clear_refs;
its children (ffmpeg) come and go, so the resident size of the server and all its descendants
together is sampled every few milliseconds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.01


def _status_bytes(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:  # the process just ended
        pass
    return 0


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, now."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += _status_bytes(current, "VmRSS")
        pending += _children(current)
    return total


class PeakMemory:
    """Within a `with` block: the server's peak resident memory, and that of its process tree.

    with PeakMemory(pid) as memory:
        call_the_server()
    assert memory.growth < 300 * MIB
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0
        self.server_peak = 0
        self.tree_peak = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to VmRSS
        self.before = tree_rss(self.pid)
        self.tree_peak = self.before
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.tree_peak = max(self.tree_peak, tree_rss(self.pid))
            time.sleep(SAMPLE_SECONDS)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._sampler.join()
        self.server_peak = _status_bytes(self.pid, "VmHWM")

    @property
    def growth(self) -> int:
        """How far above its size before the block the server, with its children, went."""
        return max(self.tree_peak, self.server_peak) - self.before

    def report(self) -> str:
        return (
            f"before {self.before / MIB:.0f} MiB, server peak {self.server_peak / MIB:.0f} MiB, "
            f"with its children {self.tree_peak / MIB:.0f} MiB"
        )


class PeakResidentMemory:
    """The peak resident memory of several named processes while a block runs (their own,
    not their children's), sampled every 0.2 s: for long runs such as many jobs at once."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], _status_bytes(pid, "VmRSS"))
            time.sleep(0.2)

    def __enter__(self) -> PeakResidentMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
