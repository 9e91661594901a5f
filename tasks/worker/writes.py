"""The worker's store calls, the one way answers go to the store: a call grades the answers that
finished (`results.py`) and writes them through their claims' tokens, or claims the next batch
(the exchange's two lanes), with one retry policy. About once a minute a call shows in Prefect
as a task run (the free tier's event budget); the others are the same call without Prefect."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import WorkerConfig
from tasks.engines import Engine
from tasks.errors import UserError
from tasks.store import Store
from tasks.store.models import Claim
from tasks.throughput import BatchReport, tokens_per_second
from tasks.worker.results import Outcome, store_outcomes

if TYPE_CHECKING:
    from tasks.worker.shards import ShardWriter

log = logging.getLogger("fleetgen")
T = TypeVar("T")
STORE_RETRY_DELAYS = [2, 10, 30]
REPORT_SECONDS = 60.0  # a device's store call is a Prefect task run at most this often


def with_retries(call: Callable[[], T], what: str = "store call") -> T:
    """`call`, retried after each of STORE_RETRY_DELAYS seconds on any error but a UserError
    (every write is idempotent: the claim tokens guard it)."""
    for delay in STORE_RETRY_DELAYS:
        try:
            return call()
        except UserError:
            raise
        except Exception as error:
            log.warning(f"{what} failed ({error}); retrying in {delay} s")
            time.sleep(delay)
    return call()  # the last attempt: its error goes on up


class StoreCalls:
    """One device's store calls (the exchange's `call`); `on_report` sees each batch written
    (with --texts: staged for the worker's next shard, `shards`)."""

    def __init__(self, *, store: Store, config: WorkerConfig, engine: Engine, task_runs: bool = False,
                 on_report: Callable[[BatchReport], None] = lambda report: None, shards: ShardWriter | None = None):
        self.store, self.config, self.engine, self.on_report, self.shards = store, config, engine, on_report, shards
        self.task_runs = task_runs
        self.until_correct = bool(store.run_config(config.run).get("until_correct"))
        self._last_task_run = -REPORT_SECONDS
        self._task_run_lock = threading.Lock()  # the exchange's two lanes call at once

    def _task_run_due(self) -> bool:
        """Whether this call shows in Prefect: one in REPORT_SECONDS at most, whichever lane asks first."""
        with self._task_run_lock:
            due = self.task_runs and time.monotonic() - self._last_task_run >= REPORT_SECONDS
            if due:
                self._last_task_run = time.monotonic()
            return due

    def __call__(self, outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        if self._task_run_due():
            report, claim = store_call(self, outcomes, want)
        else:
            report, claim = with_retries(lambda: self.write_and_claim(outcomes, want))
        if report is not None:
            self.on_report(report)
        return report, claim

    def write_and_claim(self, outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        """Write the answers that finished and claim up to `want` more. A claim that finds nothing
        on a run seeded with --until-correct settles its waiting samples (a write that failed
        halfway can leave a question waiting with none of its samples pending)."""
        report = None
        if outcomes:
            report = store_outcomes(self.store, outcomes, engine=self.engine.name, device=self.engine.label,
                                    config=self.config, shards=self.shards)
            written = "staged for the next shard" if self.shards else "written"
            log.info(f"{report.device}: {report.done} answers {written} ({report.failed} failed back), {report.tokens} "
                     f"tokens at {tokens_per_second(report.tokens, report.seconds):.1f} tokens/s")
        claim = None
        if want:
            claim = self.store.claim(self.config.run, self.config.worker_name, want, self.config.lease_seconds,
                                     max_attempts=self.config.max_attempts)
            if not claim.items and self.until_correct:
                self.store.advance(self.config.run)
        return report, claim


@task(name="store_call", cache_policy=NO_CACHE)
def store_call(calls: StoreCalls, outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
    """A store call as a Prefect task run (its retries are `with_retries`', never a second set)."""
    return with_retries(lambda: calls.write_and_claim(outcomes, want))
