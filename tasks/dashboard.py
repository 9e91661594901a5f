"""The run's dashboard in the Prefect UI: a progress artifact (% done, rate, ETA) and a Markdown
table per stage and per worker and device, kept current by every worker of the run."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any, Callable, cast
from uuid import UUID

from tasks.progress import FleetProgress, describe
from tasks.store import Store
from tasks.store.counts import count_columns, summarize
from tasks.throughput import tokens_per_second

log = logging.getLogger("fleetgen")


def artifact_key(run: str) -> str:
    """The run's name as Prefect artifact keys allow it (lowercase letters, digits, dashes)."""
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in run.lower())


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
        rate = f"{tokens_per_second(row['tokens'], row['seconds']):,.0f}" if row["seconds"] else "-"
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
                self.ids[progress_key] = cast(UUID, create_progress_artifact(snapshot["percent"], key=progress_key,
                                                                  description=description))
            if table_key in self.ids:
                client.update_artifact(self.ids[table_key], ArtifactUpdate(data=table))
            else:
                self.ids[table_key] = cast(UUID, create_markdown_artifact(table, key=table_key,
                                                               description=f"fleet dashboard of run {self.run}"))
            if created:  # another worker may have created them too: the next refresh adopts the latest
                self.refreshes = 0


def latest_artifacts(client: Any, keys: list[str]) -> dict[str, UUID]:
    """The id of the latest artifact under each key that has one (the one the UI shows)."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    found = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys)), limit=len(keys))
    return {collection.key: collection.latest_id for collection in found}
