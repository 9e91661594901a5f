"""A device's traffic with the store, one background call at a time: each call writes the answers
that finished and claims the next batch together (`writes.py`).

The engine `take`s requests (claimed ahead, so a batch is ready when the last one ends) and
`put`s back finished answers; they wait in the outbox until due. Its parts, one job each:
`ClaimedWork` (claims.py: what is claimed, until written), `Outbox` and `FailureBreaker`
(outbox.py), `IdlePolling` (polling.py). Claims are held by the heartbeat until every item of
theirs is written."""

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

# call(finished answers with their items and claims, how many to claim) -> (what was written, the new claim)
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
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-calls")
        self._pending: Future[tuple[BatchReport | None, Claim | None]] | None = None
        self._pending_want = 0
        self._lock = threading.Lock()

    def _start(self, want: int) -> None:
        self._pending_want = want
        self._pending = self._thread.submit(contextvars.copy_context().run, self._call,  # Prefect's context
                                            self.outbox.drain(), want)

    def _call(self, outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        """The store call; a new claim is in the heartbeat's hands (and a shutdown's) at once."""
        report, claim = self.call(outcomes, want)
        if claim is not None and claim.items:
            self.keeper.hold(claim)
        return report, claim

    def _stopping(self) -> bool:
        return self.shutdown is not None and self.shutdown.requested

    def _settle(self, block: bool = False) -> None:
        """Take in the last call's outcome when it is back (waiting for it with `block`)."""
        if self._pending is None or not (block or self._pending.done()):
            return
        call, want, self._pending = self._pending, self._pending_want, None
        report, claim = call.result()  # a call that failed after its retries raises here
        if report is not None:
            self.reports.append(report)
            self.keeper.forget(report.ids)
            for written in self.work.written(report.ids):
                self.keeper.drop(written)
        if claim is not None and claim.items and self._stopping():
            self.keeper.give_back(claim)  # claimed just before the stop: not started, so given back
        elif claim is not None and claim.items:
            self.work.add(claim)
        elif want:
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
                if self._pending is None and (want := self._want()) and (len(self.work.ready) < count or self.outbox):
                    self._start(want)
                if self.work.ready or not wait:
                    taken = self.work.take(count)
                    if self._pending is None and (want := self._want()):
                        self._start(want)  # claim ahead while these are answered
                    return taken
                if self._pending is not None:
                    self._settle(block=True)
                    continue
                self.outbox.add(self.breaker.release())  # nothing else to answer: no more evidence is coming
                if self.outbox:
                    self._start(0)
                    continue
                if self.polling.done(holding=bool(self.work.held)):
                    return None
                if self.keeper.wait_for_drop(self.polling.seconds_to_wait()):
                    self.polling.look_now()

    def put(self, finished: list[Finished]) -> None:
        """Answers the engine finished, into the outbox (a device whose every answer fails stops
        here with DeviceBroken); a store call starts when the outbox is due."""
        with self._lock:
            self.outbox.add(self.breaker.sort([self.work.outcome(request, answer) for request, answer in finished]))
            self.breaker.check()
            self._settle()
            if self.outbox.due() and self._pending is None:
                self._start(self._want())

    def close(self) -> None:
        """Write what is left and wait for it, then give back what was claimed but not answered
        (when the engine stopped on an error), so other devices and workers take it at once."""
        with self._lock:
            try:
                self.outbox.add(self.breaker.release())  # the run ended on them: the items' own errors after all
                self._settle(block=True)
                if self.outbox:
                    self._start(0)
                    self._settle(block=True)
            finally:
                self._thread.shutdown(wait=True)
                for claim in self.work.claims():
                    self.keeper.give_back(claim)
