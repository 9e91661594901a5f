"""The fleet's progress on a run (% done, rate, ETA from successive store counts), published as
one Prefect progress artifact per run."""

from __future__ import annotations

import contextvars
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
    `REFRESH_SECONDS` by a thread of its own (each update costs a store aggregation and a Prefect
    request), never on the devices' path: a Prefect outage or rate limit (whose retries can take
    minutes) never slows, fails or redoes the work. It is said once; the artifact catches up
    when Prefect answers again."""

    REFRESH_SECONDS = 30.0
    LAST_WORD_SECONDS = 10.0  # the final update may take this long at most

    def __init__(self, store: Store, run: str):
        self.store, self.run, self.figures = store, run, FleetProgress()
        self.artifact_id: UUID | None = None
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name=f"progress-{run}", daemon=True)  # in the flow run's Prefect context

    @classmethod
    def start(cls, store: Store, run: str) -> ProgressArtifact:
        progress = cls(store, run)
        progress._thread.start()
        return progress

    def stop(self) -> None:
        """A last update with the final figures, waited for `LAST_WORD_SECONDS` at most."""
        self._stop.set()
        self._thread.join(timeout=self.LAST_WORD_SECONDS)

    def _loop(self) -> None:
        self.refresh()
        while not self._stop.wait(self.REFRESH_SECONDS):
            self.refresh()
        self.refresh()

    def refresh(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            snapshot = self.figures.update(summarize(self.store.counts(self.run)))
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(snapshot["percent"], key=f"progress-{artifact_key(self.run)}",
                                                            description=describe(snapshot))
            else:
                update_progress_artifact(self.artifact_id, snapshot["percent"], describe(snapshot))
        except Exception as error:
            if not self.failing:
                log.warning(f"the progress artifact is not updated ({error}); the work goes on, and it catches up later")
            self.failing = True
        else:
            self.failing = False
