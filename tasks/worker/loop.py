"""One device's loop, one way: its engine answers the requests its exchange hands out and hands
the answers back; the exchange's background store call (`writes.py`) grades and writes them."""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

from tasks.config import SamplingConfig, WorkerConfig
from tasks.engines import Engine, Finished, Request
from tasks.engines.continuing import continued
from tasks.errors import UserError
from tasks.store import Store
from tasks.store.counts import summarize
from tasks.store.models import Checkpoint, Item
from tasks.throughput import BatchReport
from tasks.worker.chat import item_messages
from tasks.worker.exchange import Exchange, StoreCall
from tasks.worker.leases import LeaseKeeper
from tasks.worker.results import extract_with_llm
from tasks.worker.shards import ShardWriter
from tasks.worker.shutdown import Shutdown
from tasks.worker.writes import StoreCalls

log = logging.getLogger("fleetgen")
FLUSH_SECONDS = 10.0  # answers wait at most this long to be written when a batch's worth is slow to gather


def sampling_warnings(store: Store, runs: list[str], sampling: SamplingConfig) -> list[str]:
    """Said once at start: K samples of a question drawn greedily are K copies of one answer."""
    return [f"run {run!r} asks {samples} samples per question, but --temperature is 0: they will be identical "
            "(greedy). Set --temperature above 0 (e.g. 0.7) for different draws, or seed with --samples 1."
            for run in runs if (samples := store.run_config(run).get("samples", 1)) > 1 and sampling.temperature == 0]


def draw_seed(base: int, item: Item) -> int:
    """The seed of one sample's draw, from --seed and the sample itself (question, sample, stage):
    K samples of a question are K different draws, the same on any worker, device or retry."""
    digest = hashlib.sha256(f"{base}:{item.question_id}:{item.sample}:{item.stage}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: what every server takes


def run_finished(store: Store, run: str) -> bool:
    """Nothing pending, running or waiting (failed items stay failed); it only reads. A store that
    cannot be asked (a network hiccup) answers "not yet": an idle device asks again at its next poll."""
    try:
        summary = summarize(store.counts(run))
    except UserError:
        raise
    except Exception as error:
        log.warning(f"could not ask the store whether run {run!r} is finished ({error}); asking again")
        return False
    return summary["pending"] == summary["running"] == summary.get("waiting", 0) == 0


def device_loop(*, engine: Engine, exchange: Exchange, sampling: SamplingConfig,
                on_answers: Callable[[list[Finished]], None] | None = None) -> list[BatchReport]:
    """Run the engine until the run is finished; what finished is written even when it stops on
    an error (the error then goes on up)."""
    try:
        for group in engine.run(exchange, sampling):
            if on_answers is not None and group:
                on_answers(group)
            exchange.put(group)
    finally:
        exchange.close()
    return exchange.reports


def work_on_run(*, store: Store, engine: Engine, config: WorkerConfig, keeper: LeaseKeeper,
                calls: StoreCall | None = None, request: Callable[[Item], Request] | None = None,
                shutdown: Shutdown | None = None, idle_exit: float = 0.0,
                shards: ShardWriter | None = None) -> list[BatchReport]:
    """One device works on `config.run` until it is finished (and `idle_exit` seconds more) or
    the worker stops: `calls` are its store calls (by default `StoreCalls` without Prefect task
    runs; the worker's Prefect step makes one a minute a task run). With --texts (`shards`),
    what it answered is written to a shard, then completed, whenever it finds nothing to claim
    and when it stops, besides every --shard-seconds."""

    def ask(item: Item) -> Request:
        request = Request(key=item.id, prompt=item_messages(item, config.prompt),
                          seed=draw_seed(config.sampling.seed, item), on_progress=keeper.progress(item),
                          abandoned=shutdown.grace_ended.is_set if shutdown else lambda: False)
        if not item.partial:
            return request
        before = Checkpoint.from_dict(item.partial)  # given back or taken over mid-answer: go on from there
        return continued(request, before.text, max_new_tokens=max(1, config.sampling.max_new_tokens - before.tokens),
                         tokens_so_far=before.tokens)

    def finished() -> bool:
        if shards is not None:
            shards.flush()  # what waits for a shard is running in the store: the run is not finished before
        return run_finished(store, config.run)

    exchange = Exchange(call=calls or StoreCalls(store=store, config=config, engine=engine, shards=shards),
                        finished=finished, keeper=keeper, request=request or ask,
                        claim_size=config.claim_size, flush_seconds=FLUSH_SECONDS, poll_seconds=config.poll_seconds,
                        shutdown=shutdown, idle_exit=idle_exit)
    extract = (lambda group: extract_with_llm(engine, group, config.sampling)) if config.extract == "llm" else None
    try:
        return device_loop(engine=engine, exchange=exchange, sampling=config.sampling, on_answers=extract)
    finally:
        if shards is not None:
            shards.flush()
