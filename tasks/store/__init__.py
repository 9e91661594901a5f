"""The work store: what every flow reads and writes, chosen by URL.

Each work item is one (run, stage, question_id, sample). A worker *claims* a batch of
pending (or lease-expired) items, which marks them running under a fresh claim token and a
lease; it then *completes* or *fails* them through that token, so a worker whose lease
expired and was taken over can never overwrite the new owner's work.

`mongodb://` / `mongodb+srv://` URLs open MongoDB (`tasks/store/mongo.py`); `sqlite:///PATH`
opens an embedded SQLite file (`tasks/store/sqlite.py`, the zero-setup default). Both pass the
same conformance tests. Leases are timed with the store's `clock` (injectable for tests).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

from pydantic import SecretStr

from tasks.errors import UserError
from tasks.secrets import redact, register_url
from tasks.store.models import SAMPLING_STATUSES, STATUSES, Claim, Clock, Item, Result

DEFAULT_SQLITE_FILE = "fleetgen.db"
SCHEMES = ("mongodb://", "mongodb+srv://", "sqlite:///")
PREFECT_HIDDEN_SECRET = "**********"  # how Prefect shows a secret parameter


class Store(Protocol):
    url: str  # redacted, safe to print

    def ensure_run(self, run: str, config: dict[str, Any]) -> None:
        """Record a run (name, config snapshot, created) unless it exists."""

    def runs(self) -> list[str]:
        """Names of all runs."""

    def run_config(self, run: str) -> dict[str, Any]:
        """The settings a run was seeded with ({} for an unknown run)."""

    def set_contamination(self, run: str, report: dict[str, Any]) -> None:
        """Keep the run's latest decontamination report (tasks/decontamination.py), replacing any earlier one."""

    def contamination(self, run: str) -> dict[str, Any] | None:
        """The run's latest decontamination report; None when it was never checked."""

    def seed(self, run: str, items: Iterable[Item]) -> int:
        """Insert items that are not there yet; return how many were new."""

    def claim(self, run: str, worker: str, limit: int, lease_seconds: float, *, max_attempts: int = 3) -> Claim:
        """Atomically take up to `limit` pending or lease-expired items of `run`. Taking over an
        expired lease spends an attempt (its worker died holding it); an item whose lease expires
        for the `max_attempts`-th time is marked failed instead (a poison item)."""

    def heartbeat(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's items still held; return how many."""

    def complete(self, claim: Claim, results: dict[str, Result]) -> int:
        """Store results (by item id) of items still held by the claim; return how many."""

    def complete_many(self, parts: list[tuple[Claim, dict[str, Result]]]) -> int:
        """`complete` for several claims at once, in one round trip; return how many were stored."""

    def fail(self, claim: Claim, ids: list[str], error: str, max_attempts: int) -> int:
        """Give items back (attempts + 1) or mark them failed after `max_attempts`."""

    def advance(self, run: str) -> None:
        """For a run seeded with --until-correct, settle every question's waiting samples: cancelled
        once it has enough correct answers, else the next one made pending when none is (done
        after every write; this call repairs a question left waiting by a write that failed halfway)."""

    def release(self, claim: Claim) -> int:
        """Give still-held items back untouched (a clean shutdown); return how many."""

    def add_judgements(self, run: str, judgements: dict[str, dict[str, Any]]) -> int:
        """Store each judgement (by item id) as its done item's `result.judge`, beside the rule-based
        verdict, never changing it; return how many were stored."""

    def counts(self, run: str) -> list[dict[str, Any]]:
        """Rows {stage, status, worker, n, expired} grouping every item of the run."""

    def devices(self, run: str) -> list[dict[str, Any]]:
        """Rows {worker, device, done, tokens, seconds, last} of the answers each worker's device
        wrote (seconds: generation time; last: when its latest answer was made)."""

    def storage(self) -> dict[str, float] | None:
        """{bytes, documents, bytes_per_document} where a quota applies (MongoDB), else None."""

    def items(self, run: str, *, texts: bool = True) -> list[Item]:
        """Every item of the run (for reports, exports and tests); `texts=False` leaves the long
        texts out (question, previous answer, response: empty), which is all evaluate needs."""

    def close(self) -> None: ...


def check_store_url(url: str) -> str:
    """`url` if its scheme is one we open (its password registered for redaction); else ValueError."""
    register_url(url)
    if url == PREFECT_HIDDEN_SECRET:
        raise ValueError("the store URL arrived masked ('**********'): Prefect never hands a secret back, so set "
                         "MONGODB_URI in the environment where the flow runs instead of passing the URL")
    if not url.startswith(SCHEMES):
        raise ValueError(f"unknown store URL {redact(url)!r}: use mongodb://..., mongodb+srv://... (MongoDB, e.g. "
                         "Atlas) or sqlite:///PATH (an embedded file), via --store or the MONGODB_URI variable")
    return url


def resolve_store_url(url: SecretStr | str | None) -> str:
    """The given URL, else env MONGODB_URI, else an SQLite file in the working directory."""
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    url = url or os.environ.get("MONGODB_URI") or f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"
    try:
        return check_store_url(url)
    except ValueError as error:
        message = str(error)
        raise UserError(f"{message[:1].upper()}{message[1:]}.") from None


def open_store(url: SecretStr | str | None = None, clock: Clock = time.time) -> Store:
    """Open (and check) the store a URL names; raise UserError with a clear message."""
    url = resolve_store_url(url)
    if url.startswith("sqlite:///"):
        from tasks.store.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")), clock=clock)
    from tasks.store.mongo import MongoStore

    return MongoStore.connect(url, clock=clock)


def check_store(url: SecretStr | str | None, runs: str | None = None) -> None:
    """Before Prefect starts (seconds), fail fast on a bad store URL or an unknown run (`runs` as
    `match_runs` reads it); say which store this is."""
    store = open_store(url)
    try:
        logging.getLogger("fleetgen").info(f"store: {store.url}")
        if runs is not None:
            match_runs(store, runs)
    finally:
        store.close()


def match_runs(store: Store, spec: str) -> list[str]:
    """The runs a spec names, in its order: `a,b,c`, or shell patterns such as `suite-*` (matched
    in the order the runs were created); UserError naming the runs there are when one matches nothing."""
    known, runs = store.runs(), []
    for part in (part.strip() for part in spec.split(",") if part.strip()):
        matched = fnmatch.filter(known, part) if any(char in part for char in "*?[") else [part] * (part in known)
        if not matched:
            require_run(store, part)  # says which runs there are
        runs += [run for run in matched if run not in runs]
    return runs


def require_run(store: Store, run: str) -> None:
    """UserError naming the runs there are, when `run` is not in the store."""
    if run not in store.runs():
        known = ", ".join(store.runs()) or "none yet (seed one with python flows/seed.py)"
        raise UserError(f"Run {run!r} is not in the store {store.url}. Runs there: {known}.")


ATLAS_FREE_BYTES = 512 * 1024 * 1024  # Atlas M0: data + indexes
QUOTA_WARNING_SHARE = 0.8


def quota_warning(storage: dict[str, float] | None, quota_bytes: int = ATLAS_FREE_BYTES) -> str | None:
    """A warning when the database holds more than 80% of the free tier's quota, with how many
    more items of today's average size fit."""
    if not storage or storage["bytes"] < QUOTA_WARNING_SHARE * quota_bytes:
        return None
    left = max(0.0, quota_bytes - storage["bytes"])
    more = f"about {int(left // storage['bytes_per_document']):,} more items" if storage["bytes_per_document"] else (
        "little more")
    return (f"the database holds {storage['bytes'] / 2**20:,.0f} MB of the free tier's {quota_bytes / 2**20:,.0f} MB "
            f"(data and indexes): {more} fit. Export and drop finished runs, or move to a larger cluster, before "
            "writes are refused.")


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
