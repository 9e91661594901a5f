"""Progress where the user looks: the fleet's progress on a run (% done, rate, ETA from successive
store counts), the worker's terminal line or bar, and long loops counted in chunks. The Prefect
UI's view of it is `tasks/dashboard.py`."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Any, Iterator, Sequence, TextIO, TypeVar

from tqdm import tqdm

from tasks.throughput import BatchReport, summarize_reports

log = logging.getLogger("fleetgen")
T = TypeVar("T")


class FleetProgress:
    """Fleet-wide figures (every worker's items count, as the store sees them); the rate is
    measured over the last `window_seconds`."""

    def __init__(self, window_seconds: float = 600.0):
        self.window_seconds = window_seconds
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def update(self, summary: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        finished = summary["done"] + summary["failed"] + summary.get("cancelled", 0)  # cancelled: never to be made
        with self._lock:
            self._samples.append((now, finished))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_seconds:
                self._samples.popleft()
            start, before = self._samples[0]
        elapsed = now - start
        rate = (finished - before) / elapsed if elapsed > 0 else 0.0
        remaining = summary["pending"] + summary["running"] + summary.get("waiting", 0)
        return {"percent": 100.0 * finished / summary["total"] if summary["total"] else 100.0,
                "finished": finished, "total": summary["total"], "rate_per_minute": rate * 60,
                "eta_seconds": remaining / rate if rate > 0 else None}


def eta_text(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def describe(progress: dict[str, Any]) -> str:
    eta = progress["eta_seconds"]
    return (f"{progress['finished']:,}/{progress['total']:,} items finished fleet-wide ({progress['percent']:.1f}%), "
            f"{progress['rate_per_minute']:.1f} items/min, ETA {eta_text(eta)}")


def in_chunks(items: Sequence[T], *, size: int, what: str) -> Iterator[Sequence[T]]:
    """`items` in chunks of `size`, counted on a tqdm bar when the output is a terminal, else on
    a plain line per chunk (only when there is more than one)."""
    with tqdm(total=len(items), desc=what, unit="item", disable=not sys.stderr.isatty(), leave=False) as bar:
        for start in range(0, len(items), size):
            yield items[start:start + size]
            bar.update(min(size, len(items) - start))
            if bar.disable and len(items) > size:
                log.info(f"{what}: {min(start + size, len(items)):,}/{len(items):,} items")


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
