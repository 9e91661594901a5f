"""When an idle device asks the store again, and when it is done."""

from __future__ import annotations

import random
import time
from typing import Callable


class IdlePolling:
    """After a claim that found nothing, the device asks again `poll_seconds` later, jittered (a
    fleet's polls do not line up). It is done when it holds nothing and the run has been finished
    for `idle_exit` seconds."""

    def __init__(self, *, poll_seconds: float, idle_exit: float, finished: Callable[[], bool]):
        self.poll_seconds, self.idle_exit, self.finished = poll_seconds, idle_exit, finished
        self.quiet_until = 0.0
        self.finished_since: float | None = None

    def nothing_to_claim(self) -> None:
        self.quiet_until = time.monotonic() + self.poll_seconds * random.uniform(0.5, 1.5)

    def may_claim(self) -> bool:
        return time.monotonic() >= self.quiet_until

    def look_now(self) -> None:
        """Another device of this worker finished or gave back a claim: ask at once."""
        self.quiet_until = 0.0

    def seconds_to_wait(self) -> float:
        return max(0.05, self.quiet_until - time.monotonic())

    def done(self, *, holding: bool) -> bool:
        if holding or not self.finished():
            self.finished_since = None
            return False
        self.finished_since = self.finished_since or time.monotonic()
        return time.monotonic() - self.finished_since >= self.idle_exit
