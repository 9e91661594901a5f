"""The worker's Prefect tasks, with their retries: load an engine, and per device a loop whose
store calls (write what finished + claim the next batch; never cached, since a cached claim would
hand one batch out twice) show as a task run about once a minute, never one per batch or item."""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import WorkerConfig
from tasks.engines import Engine, create_engine
from tasks.engines.code_loop import CodeLoopEngine
from tasks.errors import UserError, retry_unless_user_error
from tasks.sandbox import SandboxPolicy
from tasks.store import Store
from tasks.store.models import Claim
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import store_and_claim, work_on_run
from tasks.worker.results import BatchReport, Outcome
from tasks.worker.shutdown import Shutdown

log = logging.getLogger("fleetgen")
T = TypeVar("T")


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def load_engine(config: WorkerConfig, *, device: str, label: str) -> Engine:
    """Load one engine copy on one device (or for one endpoint); with code execution, in the code loop."""
    engine = create_engine(engine=config.engine, model=config.model, device=device, label=label,
                           batch_size=config.batch_size)
    if not config.code_execution:
        return engine
    policy = SandboxPolicy(wall_seconds=config.code_timeout, cpu_seconds=max(1, math.ceil(config.code_timeout)),
                           required=config.required_sandbox_layers)
    return CodeLoopEngine(engine, max_executions=config.max_code_executions, policy=policy)


STORE_RETRY_DELAYS = [2, 10, 30]
REPORT_SECONDS = 60.0  # a device's store call is a Prefect task run at most this often (the free tier's event budget)


def write_and_claim(store: Store, config: WorkerConfig, engine: Engine, outcomes: list[Outcome],
                    want: int) -> tuple[BatchReport | None, Claim | None]:
    """Write the answers that finished (idempotent: the claim tokens guard every write) and claim
    up to `want` more."""
    report, claim = store_and_claim(store, config, engine, outcomes, want)
    if report is not None:
        log.info(f"{report.device}: {report.done} answers written ({report.failed} failed back), {report.tokens} "
                 f"tokens at {report.tokens / max(report.seconds, 1e-9):.1f} tokens/s")
    return report, claim


store_call = task(write_and_claim, name="store_call", retries=len(STORE_RETRY_DELAYS),
                  retry_delay_seconds=STORE_RETRY_DELAYS, retry_condition_fn=retry_unless_user_error,
                  cache_policy=NO_CACHE)


def retried(call: Callable[[], T]) -> T:
    """`call` with the store call's retries, outside Prefect (no task run, no events)."""
    for delay in STORE_RETRY_DELAYS:
        try:
            return call()
        except UserError:
            raise
        except Exception as error:
            log.warning(f"store call failed ({error}); retrying in {delay} s")
            time.sleep(delay)
    return call()  # the last attempt: its error goes on up


@task(cache_policy=NO_CACHE)
def run_device(store: Store, engine: Engine, config: WorkerConfig, keeper: LeaseKeeper, shutdown: Shutdown,
               idle_exit: float, on_report: Callable[[BatchReport], None] = lambda report: None) -> list[BatchReport]:
    """One device's loop, in its own thread, until the run has nothing pending or running (and
    `idle_exit` seconds more), or the worker stops. Its store calls show in Prefect as task runs
    about once a minute (the first one, then at most every REPORT_SECONDS); the others are the
    same call with the same retries, without Prefect. `on_report` sees each batch written."""
    last_report = -REPORT_SECONDS

    def call(outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        nonlocal last_report
        if time.monotonic() - last_report >= REPORT_SECONDS:
            last_report = time.monotonic()
            report, claim = store_call(store, config, engine, outcomes, want)
        else:
            report, claim = retried(lambda: write_and_claim(store, config, engine, outcomes, want))
        if report is not None:
            on_report(report)
        return report, claim

    return work_on_run(store=store, engine=engine, config=config, keeper=keeper, shutdown=shutdown,
                       idle_exit=idle_exit, call=call)
