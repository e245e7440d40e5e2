"""Retrying a model service that went away (UNAVAILABLE: a restart, a crash, a deploy).

Every call to a model service is retried the same way: after a backoff (0.5 s doubling to 8 s),
for as long as the service has been failing for less than the window. Progress (a frame or a
message that got through) restarts the window and the backoff, so a service restarted late in
a long job has the whole window to come back, however long the job has run.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from services.shared import errors

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    # How long a service may keep failing, from its first failure since the last progress.
    window_seconds: float = 120.0
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0


class RetryWindow:
    """The retries of one operation: `progressed` after each step that got through, `wait`
    after each failure."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._failing_since: float | None = None
        self._backoff = policy.first_backoff_seconds

    def progressed(self) -> None:
        self._failing_since = None
        self._backoff = self.policy.first_backoff_seconds

    def wait(self, error: errors.Unavailable, what: str) -> None:
        """Sleeps before the next attempt (the last one comes as the window ends), or raises
        when the window is over."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        left = self.policy.window_seconds - (now - self._failing_since)
        if left <= 0:
            raise errors.Unavailable(
                f"{error} (gave up after retrying for {self.policy.window_seconds:g} s "
                "without progress)"
            ) from None
        pause = min(self._backoff, left)
        log.warning("%s (%s); retrying in %.1f s", what, error, pause)
        time.sleep(pause)
        self._backoff = min(self._backoff * 2, self.policy.max_backoff_seconds)


def retrying(policy: RetryPolicy, attempt: Callable[[RetryWindow], T], what: str) -> T:
    """`attempt` until it returns, retrying it after UNAVAILABLE within the policy's window;
    `attempt` reports its progress to the window it is given."""
    window = RetryWindow(policy)
    while True:
        try:
            return attempt(window)
        except errors.Unavailable as error:
            window.wait(error, what)
