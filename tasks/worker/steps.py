"""The worker's Prefect tasks, with their retries: load an engine, and per device a loop of
claim (never cached: a cached claim would hand one batch out twice), answer and save, each one
task run per batch, never per item."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tasks.config import WorkerConfig
from tasks.engines import Engine, create_engine
from tasks.errors import retry_unless_user_error
from tasks.progress import ProgressArtifact
from tasks.store import Store
from tasks.store.models import Claim
from tasks.worker.batch import Answered, BatchReport, answer_claim, save_answers
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import device_loop, run_finished


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def load_engine(config: WorkerConfig, *, device: str, label: str) -> Engine:
    """Load one model copy on one device."""
    return create_engine(engine=config.engine, model=config.model, device=device, label=label)


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def claim_batch(store: Store, config: WorkerConfig) -> Claim:
    """Claim the next batch."""
    return store.claim(config.run, config.worker_name, config.batch_size, config.lease_seconds)


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def answer_batch(claim: Claim, engine: Engine, config: WorkerConfig) -> Answered:
    """Generate one batch's answers (grading waits for the save, off the device)."""
    answered = answer_claim(claim, engine, config)
    report = answered.report
    get_run_logger().info(f"{report.device}: {report.items} items, {report.tokens} tokens in {report.seconds:.1f} s "
                          f"= {report.tokens / max(report.seconds, 1e-9):.1f} tokens/s")
    return answered


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def save_batch(store: Store, answered: Answered, config: WorkerConfig, progress: ProgressArtifact) -> BatchReport:
    """Grade and write one batch back (idempotent: the claim token guards every write), then
    update the run's fleet-wide progress artifact."""
    report = save_answers(store, answered, config.max_attempts)
    progress.refresh(store)
    return report


@task(cache_policy=NO_CACHE)
def run_device(store: Store, engine: Engine, config: WorkerConfig, keeper: LeaseKeeper,
               progress: ProgressArtifact) -> list[BatchReport]:
    """One device's loop, in its own thread, until the run has nothing pending or running."""
    return device_loop(
        claim_next=lambda: claim_batch(store, config),
        answer=lambda claim: answer_batch(claim, engine, config),
        save=lambda answered: save_batch(store, answered, config, progress),
        finished=lambda: run_finished(store, config.run),
        keeper=keeper, poll_seconds=config.poll_seconds)
