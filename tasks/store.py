"""The work store: what every flow reads and writes, chosen by URL.

Each work item is one (run, stage, question_id, sample). A worker *claims* a batch of
pending (or lease-expired) items, which marks them running under a fresh claim token and a
lease; it then *completes* or *fails* them through that token, so a worker whose lease
expired and was taken over can never overwrite the new owner's work.

`mongodb://` / `mongodb+srv://` URLs open MongoDB; `sqlite:///PATH` opens an embedded SQLite
file (the zero-setup default). Both backends pass the same conformance tests.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from tasks.cli import UserError, redact

STATUSES = ("pending", "running", "done", "failed")
DEFAULT_SQLITE_FILE = "fleetgen.db"


@dataclass
class Item:
    """One unit of work: a question to answer once (one sample at one stage)."""

    question_id: str
    question: str
    reference: str
    stage: int = 0
    sample: int = 0
    status: str = "pending"
    result: dict[str, Any] | None = None
    attempts: int = 0
    worker: str | None = None
    token: str | None = None
    lease_expires: float | None = None
    error: str | None = None
    previous: str | None = None  # the response a refine round asks to improve
    id: str = ""


@dataclass
class Claim:
    """A batch of items held by one worker under one token until the lease expires."""

    token: str
    worker: str
    items: list[Item] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]


class Store(Protocol):
    url: str  # redacted, safe to print

    def ensure_run(self, run: str, config: dict[str, Any]) -> None:
        """Record a run (name, config snapshot, created) unless it exists."""

    def runs(self) -> list[str]:
        """Names of all runs."""

    def seed(self, run: str, items: Iterable[Item]) -> int:
        """Insert items that are not there yet; return how many were new."""

    def claim(self, run: str, worker: str, limit: int, lease_seconds: float) -> Claim:
        """Atomically take up to `limit` pending or lease-expired items of `run`."""

    def heartbeat(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's items still held; return how many."""

    def complete(self, claim: Claim, results: dict[str, dict[str, Any]]) -> int:
        """Store results (by item id) of items still held by the claim; return how many."""

    def fail(self, claim: Claim, ids: list[str], error: str, max_attempts: int) -> int:
        """Give items back (attempts + 1) or mark them failed after `max_attempts`."""

    def release(self, claim: Claim) -> int:
        """Give still-held items back untouched (a clean shutdown); return how many."""

    def counts(self, run: str) -> list[dict[str, Any]]:
        """Rows {stage, status, worker, n, expired} grouping every item of the run."""

    def items(self, run: str) -> list[Item]:
        """Every item of the run (for reports, exports and tests)."""

    def close(self) -> None: ...


def resolve_store_url(url: str | None) -> str:
    """The flag, else env MONGODB_URI, else an SQLite file in the working directory."""
    return url or os.environ.get("MONGODB_URI") or f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"


def open_store(url: str | None = None) -> Store:
    """Open (and check) the store a URL names; raise UserError with a clear message."""
    url = resolve_store_url(url)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from tasks.store_mongo import MongoStore

        return MongoStore.connect(url)
    if url.startswith("sqlite:///"):
        from tasks.store_sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")))
    scheme = re.match(r"^[\w+.-]*:", url)
    raise UserError(
        f"Unknown store URL {redact(url)!r}"
        + (f" (scheme {scheme.group(0)!r})" if scheme else "")
        + ". Use mongodb://..., mongodb+srv://... (MongoDB, e.g. Atlas) or sqlite:///PATH "
        "(an embedded file), via --store or the MONGODB_URI environment variable."
    )


def check_store(url: str | None, run: str | None = None) -> None:
    """Before Prefect starts (seconds), fail fast on a bad store URL or an unknown run; say which
    store this is."""
    store = open_store(url)
    try:
        logging.getLogger("fleetgen").info(f"store: {store.url}")
        if run is not None:
            require_run(store, run)
    finally:
        store.close()


def artifact_key(run: str) -> str:
    """The run's name as Prefect artifact keys allow it (lowercase letters, digits, dashes)."""
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in run.lower())


def require_run(store: Store, run: str) -> None:
    """UserError naming the runs there are, when `run` is not in the store."""
    if run not in store.runs():
        known = ", ".join(store.runs()) or "none yet (seed one with python flows/seed.py)"
        raise UserError(f"Run {run!r} is not in the store {store.url}. Runs there: {known}.")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals by status, overall, per stage and per worker, from `Store.counts` rows."""

    def empty() -> dict[str, int]:
        return {"total": 0, **{status: 0 for status in STATUSES}, "expired": 0}

    overall, stages, workers = empty(), {}, {}
    for row in rows:
        buckets = [overall, stages.setdefault(str(row["stage"]), empty())]
        if row["worker"]:
            buckets.append(workers.setdefault(row["worker"], empty()))
        for bucket in buckets:
            bucket["total"] += row["n"]
            bucket[row["status"]] += row["n"]
            bucket["expired"] += row["expired"]
    return {**overall, "stages": stages, "workers": workers}
