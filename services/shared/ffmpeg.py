"""Running the ffmpeg and ffprobe command lines: their JSON reports, their piped output, and
their messages made fit for a person (no memory addresses, no temporary file names).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import IO

from services.shared.errors import InvalidInput

# ffprobe only reads headers (and, for GIF, counts packets), so anything slower than this is a
# pathological file rather than a large one.
PROBE_TIMEOUT_SECONDS = 30
# "[gif @ 0x55d0c0a8] Invalid data" -> "Invalid data": the address means nothing to a person.
_CONTEXT_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
_MAX_REASON_LENGTH = 200


def ffprobe(path: str | Path, *arguments: str, kind: str = "video or GIF") -> dict:
    """ffprobe's JSON report; InvalidInput naming `kind` when the file is not one."""
    command = ["ffprobe", "-v", "error", "-print_format", "json", *arguments, str(path)]
    try:
        result = subprocess.run(
            command, capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise InvalidInput(
            f"{Path(path).name} took over {PROBE_TIMEOUT_SECONDS} s just to read its headers."
        ) from error
    if result.returncode != 0:
        reason = last_line(result.stderr.decode(errors="replace"), path) or "unknown format"
        raise InvalidInput(f"{Path(path).name} is not a readable {kind}: {reason}")
    return json.loads(result.stdout or b"{}")


def read_exactly(stream: IO[bytes], size: int) -> bytes:
    """`size` bytes from a pipe, or fewer only at its end."""
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def last_line(text: str, path: str | Path) -> str:
    """ffmpeg's last message, without the path: it names a temporary file nobody knows."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = _CONTEXT_PREFIX.sub("", lines[-1])
    line = line.replace(f"{path}: ", "").replace(str(path), Path(path).name)
    return line[:_MAX_REASON_LENGTH]


class StderrTail:
    """Drain a process's stderr in the background, keeping only its last lines.

    Without draining, a file that makes ffmpeg log an error per frame fills the pipe and the
    process stops, waiting for a reader, while we wait for its frames.
    """

    def __init__(self, process: subprocess.Popen, keep_lines: int = 20) -> None:
        if process.stderr is None:
            raise ValueError("the process's stderr must be a pipe")
        self._lines: deque[str] = deque(maxlen=keep_lines)
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for raw_line in self._stream:
            self._lines.append(raw_line.decode(errors="replace"))
        self._stream.close()

    def join(self) -> None:
        self._thread.join()

    def has_lines(self) -> bool:
        return bool(self._lines)

    def last_line(self, path: str | Path) -> str:
        return last_line("".join(self._lines), path)
