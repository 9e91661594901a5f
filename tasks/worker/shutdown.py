"""When a worker stops claiming: on SIGTERM or SIGINT (a notebook's session ending, Ctrl-C) or
when `--max-runtime` is nearly spent. It then lets the answers being generated finish for up to
`--grace-seconds`, writes them, gives every other claimed item back at once (other workers take
them without waiting for a lease) and exits 0 with its summary."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tasks.signals import TERMINATED

log = logging.getLogger("fleetgen")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    def __init__(self, *, grace_seconds: float, max_runtime: float | None = None):
        self.grace_seconds = grace_seconds
        self.deadline = time.monotonic() + max_runtime if max_runtime else None
        self.reason: str | None = None
        self._requested = threading.Event()
        self.grace_ended = threading.Event()  # what was still generating went back: engines may stop it
        self._grace_over: Callable[[], None] = lambda: None

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def request(self, reason: str) -> None:
        """Stop claiming; after the grace period, give back what is still being answered."""
        if self._requested.is_set():
            return
        self.reason = reason
        self._requested.set()
        log.warning(f"stopping ({reason}): no more claims; answers being generated have {self.grace_seconds:.0f} s "
                    "to finish, everything else is given back now")
        timer = threading.Timer(self.grace_seconds, self.end_grace)
        timer.daemon = True
        timer.start()

    def end_grace(self) -> None:
        """Give back what is still held, and tell the engines to stop generating it."""
        self.grace_ended.set()
        self._grace_over()

    def stop_claiming(self, batch_seconds: float) -> bool:
        """True once stopping; with `--max-runtime`, also when less time is left than a batch takes."""
        if not self.requested and self.deadline is not None and time.monotonic() + batch_seconds >= self.deadline:
            self.request(f"--max-runtime: {max(0.0, self.deadline - time.monotonic()):.0f} s left, a batch takes "
                         f"{batch_seconds:.0f} s")
        return self.requested

    @contextmanager
    def on_signals(self, grace_over: Callable[[], None]) -> Iterator[None]:
        """SIGTERM and SIGINT request the stop (a second one ends the grace period at once);
        `grace_over` gives back what is still held. Prefect's own handlers come back after."""
        self._grace_over = grace_over

        def handle(number: int, frame: Any) -> None:
            if self.requested:
                log.warning(f"{signal.Signals(number).name} again: giving everything back now")
                self.end_grace()
            else:
                self.request(signal.Signals(number).name)

        previous = {number: signal.signal(number, handle) for number in SIGNALS}
        if TERMINATED.is_set():  # a SIGTERM came while the command started (and some library swallowed it)
            self.request("SIGTERM")
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
