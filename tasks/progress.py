"""The fleet's progress on a run (% done, rate, ETA from successive store counts), published as
one Prefect progress artifact per run and shown in the worker's terminal."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, TextIO
from uuid import UUID

from tqdm import tqdm

from tasks.store import Store, summarize
from tasks.worker.results import BatchReport, summarize_reports

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


def eta_text(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def describe(progress: dict[str, Any]) -> str:
    eta = progress["eta_seconds"]
    return (f"{progress['finished']:,}/{progress['total']:,} items finished fleet-wide ({progress['percent']:.1f}%), "
            f"{progress['rate_per_minute']:.1f} items/min, ETA {eta_text(eta)}")


class ProgressArtifact:
    """The run's `progress-<run>` artifact, updated from the store's counts every
    `REFRESH_SECONDS` by a thread of its own (each update costs a store aggregation and a Prefect
    request), never on the devices' path: a Prefect outage or rate limit (whose retries can take
    minutes) never slows, fails or redoes the work. It is said once; the artifact catches up
    when Prefect answers again."""

    REFRESH_SECONDS = 30.0
    LAST_WORD_SECONDS = 10.0  # the final update may take this long at most

    def __init__(self, store: Store, run: str, on_figures: Callable[[dict[str, Any]], None] | None = None):
        self.store, self.run, self.figures, self.on_figures = store, run, FleetProgress(), on_figures
        self.artifact_id: UUID | None = None
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name=f"progress-{run}", daemon=True)  # in the flow run's Prefect context

    @classmethod
    def start(cls, store: Store, run: str,
              on_figures: Callable[[dict[str, Any]], None] | None = None) -> ProgressArtifact:
        """Start updating; `on_figures` gets each new snapshot (the terminal's progress line)."""
        progress = cls(store, run, on_figures)
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
            if self.on_figures is not None:
                self.on_figures(snapshot)
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


class TerminalProgress:
    """The worker's progress where its user looks: the fleet's items finished (the last store
    count plus this worker's answers since), this worker's answers and failures, tokens/s per
    device and the fleet's ETA. A live tqdm bar when the output is a terminal; a plain log line
    every `PLAIN_SECONDS` otherwise (Kaggle's log, CI)."""

    PLAIN_SECONDS = 30.0

    def __init__(self, run: str, file: TextIO | None = None):
        self.run, self.file = run, file or sys.stderr
        self.reports: list[BatchReport] = []
        self.fleet: dict[str, Any] | None = None
        self._since_count = 0  # this worker's answers since the fleet's last count
        self._lock = threading.Lock()
        self._last_line = 0.0
        self.bar = tqdm(desc=run, unit="item", file=self.file, dynamic_ncols=True) if self.file.isatty() else None

    def add(self, report: BatchReport) -> None:
        """A batch this worker wrote (from a device's store thread)."""
        with self._lock:
            self.reports.append(report)
            self._since_count += report.done + report.failed
            self._show()

    def fleet_figures(self, snapshot: dict[str, Any]) -> None:
        """A new count of the whole fleet's work (from the progress artifact's thread)."""
        with self._lock:
            self.fleet, self._since_count = snapshot, 0
            self._show()

    def text(self) -> str:
        totals = summarize_reports(self.reports)
        mine = totals.pop("all")
        rates = ", ".join(f"{device} {total['tokens_per_second']:.0f} tok/s" for device, total in totals.items())
        parts = [f"this worker {mine['done']:,} done, {mine['failed']} failed", rates]
        if self.fleet is not None:
            parts.append(f"fleet ETA {eta_text(self.fleet['eta_seconds'])}")
        return " | ".join(part for part in parts if part)

    def _show(self) -> None:
        fleet = self.fleet or {"finished": 0, "total": None}
        finished = fleet["finished"] + self._since_count
        if self.bar is not None:
            self.bar.total = fleet["total"]
            self.bar.n = min(finished, fleet["total"] or finished)
            self.bar.set_postfix_str(self.text(), refresh=True)
        elif time.monotonic() - self._last_line >= self.PLAIN_SECONDS:
            self._last_line = time.monotonic()
            share = f" ({100 * finished / fleet['total']:.1f}%)" if fleet["total"] else ""
            log.info(f"{self.run}: {finished:,} items finished fleet-wide{share}; {self.text()}")

    def close(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.close()
            else:
                self._last_line = 0.0
                self._show()
