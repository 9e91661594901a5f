"""The fleet's progress on a run (% done, rate, ETA from successive store counts), published as
one Prefect progress artifact per run."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any
from uuid import UUID

from tasks.store import Store, summarize

log = logging.getLogger("fleetgen")


def artifact_key(run: str) -> str:
    """The run's name as Prefect artifact keys allow it (lowercase letters, digits, dashes)."""
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in run.lower())


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


class ProgressArtifact:
    """The run's `progress-<run>` artifact, updated from the store's counts every
    `REFRESH_SECONDS` at most (each update costs a store aggregation and a Prefect request)."""

    REFRESH_SECONDS = 30.0

    def __init__(self, artifact_id: UUID, run: str, figures: FleetProgress):
        self.artifact_id, self.run, self.figures = artifact_id, run, figures
        self.refreshed = time.monotonic()

    @classmethod
    def create(cls, store: Store, run: str) -> ProgressArtifact:
        from prefect.artifacts import create_progress_artifact

        figures = FleetProgress()
        snapshot = figures.update(summarize(store.counts(run)))
        artifact_id = create_progress_artifact(snapshot["percent"], key=f"progress-{artifact_key(run)}",
                                               description=describe(snapshot))
        return cls(artifact_id, run, figures)

    def refresh(self, store: Store, force: bool = False) -> None:
        """Best effort: a dashboard hiccup never fails (or redoes) the work."""
        from prefect.artifacts import update_progress_artifact

        if not force and time.monotonic() - self.refreshed < self.REFRESH_SECONDS:
            return
        self.refreshed = time.monotonic()
        try:
            snapshot = self.figures.update(summarize(store.counts(self.run)))
            update_progress_artifact(self.artifact_id, snapshot["percent"], describe(snapshot))
        except Exception as error:
            log.warning(f"progress artifact not updated: {error}")
