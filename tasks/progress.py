"""The fleet's progress on a run: % done, rate and ETA, from successive store counts."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class FleetProgress:
    """Fleet-wide figures (every worker's items count, as the store sees them); the rate is
    measured over the last `window_seconds`."""

    def __init__(self, window_seconds: float = 600.0):
        self.window_seconds = window_seconds
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def update(self, summary: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        finished = summary["done"] + summary["failed"]
        with self._lock:
            self._samples.append((now, finished))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_seconds:
                self._samples.popleft()
            start, before = self._samples[0]
        elapsed = now - start
        rate = (finished - before) / elapsed if elapsed > 0 else 0.0
        remaining = summary["pending"] + summary["running"]
        return {"percent": 100.0 * finished / summary["total"] if summary["total"] else 100.0,
                "finished": finished, "total": summary["total"], "rate_per_minute": rate * 60,
                "eta_seconds": remaining / rate if rate > 0 else None}


def describe(progress: dict[str, Any]) -> str:
    eta = progress["eta_seconds"]
    eta_text = "unknown" if eta is None else f"{int(eta // 3600)}h{int(eta % 3600 // 60):02d}m"
    return (f"{progress['finished']:,}/{progress['total']:,} items finished fleet-wide ({progress['percent']:.1f}%), "
            f"{progress['rate_per_minute']:.1f} items/min, ETA {eta_text}")
