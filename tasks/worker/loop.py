"""One device's loop: the device only generates, while claiming the next batch and writing the
last one's results happen in a background thread."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from tasks.config import SamplingConfig
from tasks.store import Store, summarize
from tasks.store.models import Claim
from tasks.worker.batch import Answered, BatchReport
from tasks.worker.leases import LeaseKeeper


def sampling_warnings(store: Store, runs: list[str], sampling: SamplingConfig) -> list[str]:
    """Said once at start: K samples of a question drawn greedily are K copies of one answer."""
    return [f"run {run!r} asks {samples} samples per question, but --temperature is 0: they will be identical "
            "(greedy). Set --temperature above 0 (e.g. 0.7) for different draws, or seed with --samples 1."
            for run in runs if (samples := store.run_config(run).get("samples", 1)) > 1 and sampling.temperature == 0]


def run_finished(store: Store, run: str) -> bool:
    """Nothing pending and nothing running (failed items stay failed)."""
    summary = summarize(store.counts(run))
    return summary["pending"] == 0 and summary["running"] == 0


def device_loop(*, claim_next: Callable[[], Claim], answer: Callable[[Claim], Answered],
                save: Callable[[Answered], BatchReport], finished: Callable[[], bool], keeper: LeaseKeeper,
                poll_seconds: float) -> list[BatchReport]:
    """Loop until the run is finished; writes happen in claim order, and a failed write raises."""
    reports: list[BatchReport] = []
    saving: list[Future[BatchReport]] = []

    def claim_and_hold() -> Claim:
        claim = claim_next()
        if claim.items:
            keeper.hold(claim)
        return claim

    def save_and_drop(answered: Answered) -> BatchReport:
        try:
            return save(answered)
        finally:
            keeper.drop(answered.claim)

    def collect(wait: bool) -> None:
        while saving and (wait or saving[0].done()):
            reports.append(saving.pop(0).result())  # a failed write raises here

    with ThreadPoolExecutor(1, thread_name_prefix="store-io") as io:
        def background(function: Callable[..., Any], *args: Any) -> Future[Any]:
            return io.submit(contextvars.copy_context().run, function, *args)  # keeps Prefect's context

        upcoming = background(claim_and_hold)
        while True:
            claim = upcoming.result()
            if not claim.items:
                collect(wait=True)
                if finished():
                    return reports
                time.sleep(poll_seconds)
                upcoming = background(claim_and_hold)
                continue
            upcoming = background(claim_and_hold)
            saving.append(background(save_and_drop, answer(claim)))
            collect(wait=False)
