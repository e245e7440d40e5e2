"""Every server process keeps its temporary files in a folder of its own, and the folders of
dead processes are removed when any server starts.

A process killed with SIGKILL cleans nothing up: a user's recording, the voice extracted from
it, a half-encoded result would stay on disk. So each server makes `{root}/{service}-{pid}-*`
at start, points `tempfile` and its child processes (TMPDIR) at it, and holds an exclusive lock
on the folder's lock file for as long as it lives. The kernel drops a process's locks however
it ends, so a folder whose lock can be taken has no owner left and is removed; unlike a pid
check, a pid reused by another process (every container's first process is pid 1) cannot
keep a dead process's files alive. Only folders holding the lock file are ever touched.
"""

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.shared.settings import from_env

log = logging.getLogger(__name__)

OWNER_LOCK = ".owner.lock"
# Held while a folder is claimed or the root swept, so that a folder is never swept between
# its creation and its owner's lock.
ROOT_LOCK = ".root.lock"


@dataclass(frozen=True)
class ScratchSettings:
    # Where the servers' temporary folders are made; empty: `remind` in the system's
    # temporary folder. Servers sharing a root clean up after each other.
    root: str = ""

    def root_path(self) -> Path:
        return Path(self.root) if self.root else Path(tempfile.gettempdir()) / "remind"

    @classmethod
    def load(cls) -> "ScratchSettings":
        return from_env(cls, "REMIND_SCRATCH")


def _try_lock(path: Path) -> IO[str] | None:
    """The file opened and exclusively locked, or None when another process holds it."""
    handle = open(path, "a")  # noqa: SIM115 - the lock lives as long as the handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def remove_abandoned(root: Path) -> list[Path]:
    """Removes the folders under `root` whose owner is gone; returns them."""
    removed = []
    for folder in root.iterdir():
        if not (folder / OWNER_LOCK).is_file():
            continue
        lock = _try_lock(folder / OWNER_LOCK)
        if lock is None:
            continue  # its owner is alive
        with lock:
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


@contextmanager
def own_scratch_folder(service: str, root: Path) -> Iterator[Path]:
    """This process's temporary folder, where `tempfile` and child processes put their files,
    for the duration of the block; dead processes' folders are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ROOT_LOCK, "a") as root_lock:
        fcntl.flock(root_lock, fcntl.LOCK_EX)
        for folder in remove_abandoned(root):
            log.info("removed %s, left behind by a process that is gone", folder)
        folder = Path(tempfile.mkdtemp(prefix=f"{service}-{os.getpid()}-", dir=root))
        owner = _try_lock(folder / OWNER_LOCK)
    assert owner is not None, "nobody else knows the folder yet"
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        owner.close()
