"""SIGTERM where no stop was planned for (a command's start or end, any flow but the worker's
loop, which stops cleanly by itself: `tasks/worker/shutdown.py`)."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM where no stop was planned for: it unwinds like Ctrl-C (whatever the command
    opened is closed on the way), and the command says so."""


TERMINATED = threading.Event()  # set by the first SIGTERM, wherever the exception it raised ends up


def _terminate(number: int, frame: Any) -> None:
    TERMINATED.set()
    raise Terminated()


def raise_on_sigterm() -> None:
    """From now on, SIGTERM raises Terminated (and sets TERMINATED)."""
    signal.signal(signal.SIGTERM, _terminate)
