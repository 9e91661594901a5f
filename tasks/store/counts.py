"""A run's counts by status, per stage and per worker, from `Store.counts` rows."""

from __future__ import annotations

from typing import Any

from tasks.store.models import SAMPLING_STATUSES, STATUSES


def count_columns(summary: dict[str, Any]) -> tuple[str, ...]:
    """The counts a run's tables show: total, each status (waiting and cancelled where the run has
    them), expired leases."""
    return ("total", *STATUSES, *(name for name in SAMPLING_STATUSES if summary.get(name)), "expired")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals by status, overall, per stage and per worker, from `Store.counts` rows."""

    def empty() -> dict[str, int]:
        return {"total": 0, **{status: 0 for status in STATUSES}, "expired": 0}

    overall: dict[str, int] = empty()
    stages: dict[str, dict[str, int]] = {}
    workers: dict[str, dict[str, int]] = {}
    for row in rows:
        buckets = [overall, stages.setdefault(str(row["stage"]), empty())]
        if row["worker"]:
            buckets.append(workers.setdefault(row["worker"], empty()))
        for bucket in buckets:
            bucket["total"] += row["n"]
            bucket[row["status"]] = bucket.get(row["status"], 0) + row["n"]  # waiting, cancelled where there are
            bucket["expired"] += row["expired"]
    return {**overall, "stages": stages, "workers": workers}
