"""The fleet's progress on a run (% done, rate, ETA from successive store counts), published as
the run's dashboard in the Prefect UI (a progress artifact and a Markdown table per run) and
shown in the worker's terminal."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Sequence, TextIO, TypeVar
from uuid import UUID

from tqdm import tqdm

from tasks.store import Store, count_columns, summarize
from tasks.worker.results import BatchReport, summarize_reports

log = logging.getLogger("fleetgen")
T = TypeVar("T")


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


def dashboard_markdown(run: str, summary: dict[str, Any], snapshot: dict[str, Any], devices: list[dict[str, Any]],
                       *, worker: str, now: float | None = None) -> str:
    """The run's dashboard table: per stage (pending, running, done, failed, expired leases) and
    per worker and device (answers written, tokens/s while generating, when its last answer came)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    columns = count_columns(summary)
    lines = [f"### Run `{run}`: {describe(snapshot)}", "",
             f"Updated {stamp} by worker `{worker}` (every worker of the run updates it; the store's counts).", "",
             "| stage | " + " | ".join(columns).replace("expired", "expired leases") + " |",
             "|---" * (len(columns) + 1) + "|"]
    rows = [*summary["stages"].items(), ("all", summary)]
    lines += [f"| {stage} | " + " | ".join(f"{counts.get(c, 0):,}" for c in columns) + " |" for stage, counts in rows]
    lines += ["", "| worker | device | answers | tokens | tokens/s | last answer |", "|---|---|---|---|---|---|"]
    for row in devices:
        rate = f"{row['tokens'] / row['seconds']:,.0f}" if row["seconds"] else "-"
        last = (f"{time.strftime('%H:%M:%S', time.gmtime(row['last']))} ({max(0, now - row['last']):.0f} s before)"
                if row["last"] else "-")
        lines.append(f"| {row['worker']} | {row['device']} | {row['done']:,} | {row['tokens']:,} | {rate} | {last} |")
    if not devices:
        lines.append("| - | - | 0 | 0 | - | - |")
    return "\n".join(lines)


class RunDashboard:
    """The run's two artifacts in the Prefect UI, shared by every worker of the run: `progress-<run>`
    (the fleet's % done as a progress bar, rate and ETA) and `dashboard-<run>` (a Markdown table per
    stage and per worker and device). Each worker updates the latest artifact under each key from
    the store's counts, so when one dies the others keep them current. Updated by a thread of its
    own, never on the devices' path: a Prefect outage or rate limit (whose retries can take minutes)
    never slows, fails or redoes the work. It is said once; the artifacts catch up when Prefect
    answers again. A fleet shares the Prefect request budget: each worker refreshes every
    `REFRESH_SECONDS`, or `SECONDS_PER_WORKER` x the workers holding items, whichever is longer
    (about 100 requests/min for the whole fleet at most)."""

    REFRESH_SECONDS = 30.0
    SECONDS_PER_WORKER = 1.2  # 2 updates per refresh
    LOOKUP_EVERY = 10  # refreshes between two lookups of the latest artifacts (two workers may create them at once)
    LAST_WORD_SECONDS = 10.0  # the final update may take this long at most

    def __init__(self, store: Store, run: str, *, worker: str,
                 on_figures: Callable[[dict[str, Any]], None] | None = None):
        self.store, self.run, self.worker, self.on_figures = store, run, worker, on_figures
        self.figures = FleetProgress()
        self.key = artifact_key(run)
        self.ids: dict[str, UUID] = {}  # artifact key -> the id this worker updates
        self.refreshes = 0
        self.period = self.REFRESH_SECONDS
        self.failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name=f"dashboard-{run}", daemon=True)  # in the flow run's Prefect context

    @classmethod
    def start(cls, store: Store, run: str, *, worker: str,
              on_figures: Callable[[dict[str, Any]], None] | None = None) -> RunDashboard:
        """Start updating; `on_figures` gets each new snapshot (the terminal's progress line)."""
        dashboard = cls(store, run, worker=worker, on_figures=on_figures)
        dashboard._thread.start()
        return dashboard

    def stop(self) -> None:
        """A last update with the final figures, waited for `LAST_WORD_SECONDS` at most."""
        self._stop.set()
        self._thread.join(timeout=self.LAST_WORD_SECONDS)

    def _loop(self) -> None:
        self.refresh()
        while not self._stop.wait(self.period):
            self.refresh()
        self.refresh()

    def refresh(self) -> None:
        try:
            summary = summarize(self.store.counts(self.run))
            snapshot = self.figures.update(summary)
            if self.on_figures is not None:
                self.on_figures(snapshot)
            holding = sum(1 for counts in summary["workers"].values() if counts["running"])
            self.period = max(self.REFRESH_SECONDS, self.SECONDS_PER_WORKER * holding)
            self.publish(summary, snapshot, self.store.devices(self.run))
        except Exception as error:
            if not self.failing:
                log.warning(f"the run's dashboard is not updated ({error}); the work goes on, and it catches up later")
            self.failing = True
        else:
            self.failing = False

    def publish(self, summary: dict[str, Any], snapshot: dict[str, Any], devices: list[dict[str, Any]]) -> None:
        from prefect.artifacts import create_markdown_artifact, create_progress_artifact
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        description = describe(snapshot)
        table = dashboard_markdown(self.run, summary, snapshot, devices, worker=self.worker)
        progress_key, table_key = f"progress-{self.key}", f"dashboard-{self.key}"
        with get_client(sync_client=True) as client:
            if self.refreshes % self.LOOKUP_EVERY == 0:
                self.ids = latest_artifacts(client, [progress_key, table_key])
            self.refreshes += 1
            created = len(self.ids) < 2
            if progress_key in self.ids:
                client.update_artifact(self.ids[progress_key], ArtifactUpdate(data=snapshot["percent"],
                                                                              description=description))
            else:
                self.ids[progress_key] = create_progress_artifact(snapshot["percent"], key=progress_key,
                                                                  description=description)
            if table_key in self.ids:
                client.update_artifact(self.ids[table_key], ArtifactUpdate(data=table))
            else:
                self.ids[table_key] = create_markdown_artifact(table, key=table_key,
                                                               description=f"fleet dashboard of run {self.run}")
            if created:  # another worker may have created them too: the next refresh adopts the latest
                self.refreshes = 0


def latest_artifacts(client: Any, keys: list[str]) -> dict[str, UUID]:
    """The id of the latest artifact under each key that has one (the one the UI shows)."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    found = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys)), limit=len(keys))
    return {collection.key: collection.latest_id for collection in found}


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
