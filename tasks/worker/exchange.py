"""A device's traffic with the store, in two background lanes: claims (the next batch, claimed
ahead so it is ready when the last one ends) and writes (the answers that finished, graded on
the way: `writes.py`). A claim never waits behind a slow write (grading that yields the CPU to
generation, a store that retries), one of each at a time.

The engine `take`s requests and `put`s back finished answers; they wait in the outbox until due.
Its parts, one job each: `ClaimedWork` (claims.py: what is claimed, until written), `Outbox` and
`FailureBreaker` (outbox.py), `IdlePolling` (polling.py). Claims are held by the heartbeat until
every item of theirs is written."""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from tasks.engines import Finished, Request
from tasks.store.models import Claim, Item
from tasks.throughput import BatchReport
from tasks.worker.claims import ClaimedWork
from tasks.worker.leases import LeaseKeeper
from tasks.worker.outbox import FailureBreaker, Outbox
from tasks.worker.polling import IdlePolling
from tasks.worker.results import Outcome
from tasks.worker.shutdown import Shutdown

# call(finished answers with their items and claims, how many to claim) -> (what was written, the new claim);
# the exchange asks for one of the two at a time, each in its lane
StoreCall = Callable[[list[Outcome], int], tuple[BatchReport | None, Claim | None]]


class Exchange:
    def __init__(self, *, call: StoreCall, finished: Callable[[], bool], keeper: LeaseKeeper,
                 request: Callable[[Item], Request], claim_size: int, flush_seconds: float, poll_seconds: float,
                 shutdown: Shutdown | None = None, idle_exit: float = 0.0):
        self.call, self.keeper, self.shutdown, self.claim_size = call, keeper, shutdown, claim_size
        self.work = ClaimedWork(request)
        self.outbox = Outbox(batch=claim_size, flush_seconds=flush_seconds)
        self.breaker = FailureBreaker(max(8, 2 * claim_size))
        self.polling = IdlePolling(poll_seconds=poll_seconds, idle_exit=idle_exit, finished=finished)
        self.reports: list[BatchReport] = []
        self._lanes = ThreadPoolExecutor(2, thread_name_prefix="store-calls")
        self._claiming: Future[Claim | None] | None = None
        self._given_back = False  # a write gave items back while the claim under way looked: it may not have seen them
        self._writing: Future[tuple[BatchReport | None, list[Outcome]]] | None = None
        self._lock = threading.Lock()

    def _claim(self) -> None:
        """Claim ahead, when one is wanted and none is under way."""
        if self._claiming is None and (want := self._want()):
            self._given_back = False
            self._claiming = self._lanes.submit(contextvars.copy_context().run, self._call_claim, want)

    def _call_claim(self, want: int) -> Claim | None:
        """The claim; in the heartbeat's hands (and a shutdown's) at once."""
        _, claim = self.call([], want)
        if claim is not None and claim.items:
            self.keeper.hold(claim)
        return claim

    def _write(self) -> None:
        """Write what the outbox holds, unless a write is under way."""
        if self._writing is None and self.outbox:
            self._writing = self._lanes.submit(contextvars.copy_context().run, self._call_write, self.outbox.drain())

    def _call_write(self, outcomes: list[Outcome]) -> tuple[BatchReport | None, list[Outcome]]:
        report, _ = self.call(outcomes, 0)
        return report, outcomes

    def _stopping(self) -> bool:
        return self.shutdown is not None and self.shutdown.requested

    def _settle(self, *, claim: bool = False, write: bool = False) -> None:
        """Take in what came back (waiting for the claim or the write under way, as told); a call
        that failed after its retries raises here."""
        if self._writing is not None and (write or self._writing.done()):
            writing, self._writing = self._writing, None
            report, outcomes = writing.result()
            for written in self.work.written(outcomes):
                self.keeper.drop(written)
            self.keeper.forget([outcome.item.id for outcome in outcomes if outcome.item.id not in self.work.held])
            if report is not None:
                self.reports.append(report)
                if report.failed:  # items given back for another attempt: claimable at once
                    self.polling.look_now()
                    self._given_back = True
        if self._claiming is not None and (claim or self._claiming.done()):
            claiming, self._claiming = self._claiming, None
            claimed = claiming.result()
            if claimed is not None and claimed.items and self._stopping():
                self.keeper.give_back(claimed)  # claimed just before the stop: not started, so given back
            elif claimed is not None and claimed.items:
                self.work.add(claimed)
            elif not self._given_back:
                self.polling.nothing_to_claim()

    def _want(self) -> int:
        """Claim when at most one batch is left ready (so the next one is there in time); never
        once the worker is stopping."""
        if self.shutdown is not None and self.shutdown.stop_claiming(self.work.batch_seconds):
            return 0
        return self.claim_size if len(self.work.ready) <= self.claim_size and self.polling.may_claim() else 0

    def take(self, count: int, wait: bool) -> list[Request] | None:
        with self._lock:
            while True:
                self._settle()
                if self._stopping():
                    return None  # the engine finishes what it has; close writes it and gives back the rest
                self._claim()
                if self.work.ready or not wait:
                    taken = self.work.take(count)
                    self._claim()  # claim ahead while these are answered
                    return taken
                if self._claiming is not None:
                    self._settle(claim=True)
                    continue
                self.outbox.add(self.breaker.release())  # nothing else to answer: no more evidence is coming
                self._write()
                if self._writing is not None:
                    self._settle(write=True)  # what it writes may be all the run is waiting for
                    continue
                if self.polling.done(holding=bool(self.work.held)):
                    return None
                if self.keeper.wait_for_drop(self.polling.seconds_to_wait()):
                    self.polling.look_now()

    def put(self, finished: list[Finished]) -> None:
        """Answers the engine finished, into the outbox (a device whose every answer fails stops
        here with DeviceBroken); a write starts when the outbox is due."""
        with self._lock:
            self.outbox.add(self.breaker.sort([self.work.outcome(request, answer) for request, answer in finished]))
            self.breaker.check()
            self._settle()
            if self.outbox.due():
                self._write()
            self._claim()

    def close(self) -> None:
        """Write what is left and wait for it, then give back what was claimed but not answered
        (when the engine stopped on an error), so other devices and workers take it at once."""
        with self._lock:
            try:
                self.outbox.add(self.breaker.release())  # the run ended on them: the items' own errors after all
                self._settle(claim=True, write=True)
                self._write()
                self._settle(write=True)
            finally:
                self._lanes.shutdown(wait=True)
                for claim in self.work.claims():
                    self.keeper.give_back(claim)
