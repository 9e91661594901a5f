"""A worker's answers' texts on their way to shards (`--texts`, `tasks/texts.py`): gathered for
`--shard-seconds`, written as one shard per run, and only then are the answers completed in the
store, pointing at it (durable before done). Their claims stay held, heartbeats going on, until
then. A shard that cannot be written (after the retries) keeps its answers for the next shard (a
hub's 429 passes); the third failure in a row gives their items back (attempts + 1), and a
stopping worker's last failure gives them back untouched. An answer the store refuses (its lease
was taken over) leaves an orphan row that no reader follows."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from tasks.config import WorkerConfig
from tasks.errors import UserError
from tasks.store import Store
from tasks.store.models import Claim, Result
from tasks.texts import TextsLocation, hub_plan, texts_row
from tasks.worker.leases import LeaseKeeper
from tasks.worker.writes import with_retries

log = logging.getLogger("fleetgen")
Part = tuple[Claim, dict[str, Result]]
FAILED_SHARDS_BEFORE_GIVING_BACK = 3


class ShardWriter:
    def __init__(self, *, location: TextsLocation, store: Store, keeper: LeaseKeeper, worker: str,
                 shard_seconds: float, max_attempts: int):
        self.location, self.store, self.keeper, self.worker = location, store, keeper, worker
        self.shard_seconds, self.max_attempts = shard_seconds, max_attempts
        self.shards_written = self.failed_in_a_row = 0
        self._staged: list[Part] = []
        self._lock, self._flushing, self._stop = threading.Lock(), threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._often, name="shards", daemon=True)

    def __enter__(self) -> ShardWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.flush(last=True)

    def stage(self, parts: list[Part]) -> int:
        """Keep graded answers for the next shard (their claims held until it is written); return how many."""
        for claim, results in parts:
            self.keeper.stage(claim, list(results))
        with self._lock:
            self._staged += parts
        return sum(len(results) for _, results in parts)

    def flush(self, *, last: bool = False) -> int:
        """Write what is staged, a shard per run, then complete those answers in the store; return
        how many (`last`: the worker is stopping, what cannot be written goes back untouched)."""
        with self._flushing:
            with self._lock:
                staged, self._staged = self._staged, []
            by_run: dict[str, list[Part]] = defaultdict(list)
            for claim, results in staged:
                by_run[claim.run].append((claim, results))
            return sum(self._write(run, parts, last=last) for run, parts in by_run.items())

    def _write(self, run: str, parts: list[Part], *, last: bool) -> int:
        path = self.location.new_shard(run, self.worker)
        rows = [texts_row(item, claim.token, results[item.id]) for claim, results in parts for item in claim.items
                if item.id in results]
        kept = False
        try:
            try:
                size = with_retries(lambda: self.location.write(path, rows), what="shard write")
            except Exception as error:
                kept = self._failed(parts, error, last=last)
                return 0
            self.shards_written, self.failed_in_a_row = self.shards_written + 1, 0
            pointing = [(claim, {id_: replace(result, response="", reasoning=None, texts={"shard": path})
                                 for id_, result in results.items()}) for claim, results in parts]
            done = with_retries(lambda: self.store.complete_many(pointing))
        except Exception as error:  # the store unreachable: the items return to the run when their lease ends
            log.error(f"could not write {len(rows)} answers of shard {path} to the store ({error}); their items "
                      "return to the run when their lease ends")
            return 0
        finally:
            if not kept:
                for claim, results in parts:
                    self.keeper.unstage(claim, list(results))
        log.info(f"shard {path}: {len(rows)} answers, {size / 1024:,.1f} KB, written to {self.location.url}; {done} "
                 "done in the store")
        if done < len(rows):
            log.warning(f"{len(rows) - done} answers of shard {path} were not written to the store: their items are "
                        "no longer this worker's (their lease expired and another worker took them); their rows are "
                        "orphans, never read (python flows/texts.py --drop-orphans removes them)")
        return done

    def _failed(self, parts: list[Part], error: Exception, *, last: bool) -> bool:
        """A shard not written: keep its answers for the next one (True), or give their items back
        (the third time in a row: attempts + 1, the error kept; when stopping: untouched)."""
        self.failed_in_a_row += 1
        why = f"texts not written to {self.location.url}: {type(error).__name__}: {error}"[:500]
        answers = sum(len(results) for _, results in parts)
        if not last and self.failed_in_a_row < FAILED_SHARDS_BEFORE_GIVING_BACK:
            log.error(f"{why}; its {answers} answers wait for the next shard ({self.failed_in_a_row} of "
                      f"{FAILED_SHARDS_BEFORE_GIVING_BACK} tries)")
            with self._lock:
                self._staged[:0] = parts
            return True
        log.error(f"{why}; {answers} answers go back to the store" + ("" if last else " (attempts + 1)"))
        for claim, results in parts:
            if last:
                with_retries(lambda: self.store.release(claim.only(results)))
            else:
                with_retries(lambda: self.store.fail(claim, list(results), why, self.max_attempts))
        return False

    def _often(self) -> None:
        while not self._stop.wait(self.shard_seconds):
            self.flush()


def shard_writer(*, store: Store, keeper: LeaseKeeper, config: WorkerConfig,
                 runs: list[str]) -> AbstractContextManager[ShardWriter | None]:
    """With --texts: the worker's shard writer, the runs recorded as keeping their texts there
    (a run's workers must all write to one place); without: None."""
    if not config.texts:
        return nullcontext(None)
    location = TextsLocation(config.texts)
    location.check()
    for run in runs:
        recorded = store.texts_url(run)
        if recorded and recorded != location.url:
            raise UserError(f"Run {run!r} keeps its texts at {recorded} (where its workers write them), not at "
                            f"{location.url}: give every worker of a run the same --texts.")
        store.set_texts_url(run, location.url)
    log.info(hub_plan(location.url, config.shard_window) or f"texts: a shard every {config.shard_window:g} s to "
             f"{location.url}; answers are done in the store once their shard is written")
    return ShardWriter(location=location, store=store, keeper=keeper, worker=config.worker_name,
                       shard_seconds=config.shard_window, max_attempts=config.max_attempts)
