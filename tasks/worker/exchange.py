"""A device's traffic with the store, one background call at a time: each call writes the answers
that finished and claims the next batch together (one Prefect task run, not one per step).

The engine `take`s requests (claimed ahead, so a batch is ready when the last one ends) and
`put`s back finished answers; they are written when a batch's worth has gathered or after
`flush_seconds`. Claims are held by the heartbeat until every item of theirs is written."""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from tasks.engines import Finished, Request
from tasks.store.models import Claim, Item
from tasks.worker.leases import LeaseKeeper
from tasks.worker.results import BatchReport, Outcome

# call(finished answers with their items and claims, how many to claim) -> (what was written, the new claim)
StoreCall = Callable[[list[Outcome], int], tuple[BatchReport | None, Claim | None]]


class Exchange:
    def __init__(self, *, call: StoreCall, finished: Callable[[], bool], keeper: LeaseKeeper,
                 request: Callable[[Item], Request], claim_size: int, flush_seconds: float, poll_seconds: float):
        self.call, self.finished, self.keeper, self.request = call, finished, keeper, request
        self.claim_size, self.flush_seconds, self.poll_seconds = claim_size, flush_seconds, poll_seconds
        self.ready: deque[Request] = deque()
        self.held: dict[str, tuple[Item, Claim]] = {}  # item id -> the item and its claim, until written
        self.unwritten: dict[str, int] = {}  # claim token -> its items not written yet
        self.outbox: list[Outcome] = []
        self.outbox_since = 0.0
        self.reports: list[BatchReport] = []
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-calls")
        self._pending: Future[tuple[BatchReport | None, Claim | None]] | None = None
        self._pending_want = 0
        self._quiet_until = 0.0
        self._lock = threading.Lock()

    def _start(self, want: int) -> None:
        outbox, self.outbox = self.outbox, []
        self._pending_want = want
        self._pending = self._thread.submit(contextvars.copy_context().run, self.call, outbox, want)  # Prefect's context

    def _settle(self, block: bool = False) -> None:
        """Take in the last call's outcome when it is back (waiting for it with `block`)."""
        if self._pending is None or not (block or self._pending.done()):
            return
        call, want, self._pending = self._pending, self._pending_want, None
        report, claim = call.result()  # a call that failed after its retries raises here
        if report is not None:
            self.reports.append(report)
            self._written(report.ids)
        if claim is not None and claim.items:
            self.keeper.hold(claim)
            self.unwritten[claim.token] = len(claim.items)
            for item in claim.items:
                self.held[item.id] = (item, claim)
            self.ready.extend(self.request(item) for item in claim.items)
        elif want:
            self._quiet_until = time.monotonic() + self.poll_seconds  # nothing to claim: ask again later

    def _written(self, ids: list[str]) -> None:
        for id_ in ids:
            _, claim = self.held.pop(id_)
            self.unwritten[claim.token] -= 1
            if self.unwritten[claim.token] == 0:
                del self.unwritten[claim.token]
                self.keeper.drop(claim)

    def _want(self) -> int:
        """Claim when at most one batch is left ready (so the next one is there in time)."""
        return self.claim_size if len(self.ready) <= self.claim_size and time.monotonic() >= self._quiet_until else 0

    def take(self, count: int, wait: bool) -> list[Request] | None:
        with self._lock:
            while True:
                self._settle()
                if self._pending is None and (want := self._want()) and (len(self.ready) < count or self.outbox):
                    self._start(want)
                if self.ready or not wait:
                    taken = [self.ready.popleft() for _ in range(min(count, len(self.ready)))]
                    if self._pending is None and (want := self._want()):
                        self._start(want)  # claim ahead while these are answered
                    return taken
                if self._pending is not None:
                    self._settle(block=True)
                    continue
                if self.outbox:
                    self._start(0)
                    continue
                if not self.held and self.finished():
                    return None
                time.sleep(max(0.05, self._quiet_until - time.monotonic()))

    def put(self, finished: list[Finished]) -> None:
        """Answers the engine finished; written once a batch's worth is here, or after `flush_seconds`."""
        with self._lock:
            if finished and not self.outbox:
                self.outbox_since = time.monotonic()
            self.outbox += [Outcome(item=self.held[request.key][0], claim=self.held[request.key][1], answer=answer)
                            for request, answer in finished]
            self._settle()
            due = len(self.outbox) >= self.claim_size or self.outbox and (
                time.monotonic() - self.outbox_since >= self.flush_seconds)
            if due and self._pending is None:
                self._start(self._want())

    def close(self) -> None:
        """Write what is left and wait for it (also when the engine stopped on an error)."""
        with self._lock:
            try:
                self._settle(block=True)
                if self.outbox:
                    self._start(0)
                    self._settle(block=True)
            finally:
                self._thread.shutdown(wait=True)
