"""A device's traffic with the store, one background call at a time: each call writes the answers
that finished and claims the next batch together (one Prefect task run, not one per step).

The engine `take`s requests (claimed ahead, so a batch is ready when the last one ends) and
`put`s back finished answers; they are written when a batch's worth has gathered or after
`flush_seconds`. Claims are held by the heartbeat until every item of theirs is written."""

from __future__ import annotations

import contextvars
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from tasks.engines import Finished, Request, UnanswerableItem
from tasks.store.models import Claim, Item
from tasks.worker.leases import LeaseKeeper
from tasks.worker.results import BatchReport, Outcome
from tasks.worker.shutdown import Shutdown

# call(finished answers with their items and claims, how many to claim) -> (what was written, the new claim)
StoreCall = Callable[[list[Outcome], int], tuple[BatchReport | None, Claim | None]]


class DeviceBroken(RuntimeError):
    """Every answer of a device fails (a corrupted CUDA context, a dead server)."""


class Exchange:
    def __init__(self, *, call: StoreCall, finished: Callable[[], bool], keeper: LeaseKeeper,
                 request: Callable[[Item], Request], claim_size: int, flush_seconds: float, poll_seconds: float,
                 shutdown: Shutdown | None = None, idle_exit: float = 0.0):
        self.call, self.finished, self.keeper, self.request = call, finished, keeper, request
        self.claim_size, self.flush_seconds, self.poll_seconds = claim_size, flush_seconds, poll_seconds
        self.shutdown, self.idle_exit = shutdown, idle_exit
        self.claimed_at: dict[str, float] = {}  # claim token -> when it came
        self.batch_seconds = 0.0  # how long the last claim took from claimed to all written
        self._finished_since: float | None = None
        self.suspects: list[Outcome] = []  # failed answers since the device last answered one
        self.breaker = max(8, 2 * claim_size)
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
        self._pending = self._thread.submit(contextvars.copy_context().run, self._call, outbox, want)  # Prefect's context

    def _call(self, outbox: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        """The store call; a new claim is in the heartbeat's hands (and a shutdown's) at once."""
        report, claim = self.call(outbox, want)
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
            self._written(report.ids)
        if claim is not None and claim.items and self._stopping():
            self.keeper.give_back(claim)  # claimed just before the stop: not started, so given back
        elif claim is not None and claim.items:
            self.claimed_at[claim.token] = time.monotonic()
            self.unwritten[claim.token] = len(claim.items)
            for item in claim.items:
                self.held[item.id] = (item, claim)
            self.ready.extend(self.request(item) for item in claim.items)
        elif want:
            # nothing to claim: ask again later, at a moment of its own (a fleet's polls do not line up)
            self._quiet_until = time.monotonic() + self.poll_seconds * random.uniform(0.5, 1.5)

    def _written(self, ids: list[str]) -> None:
        for id_ in ids:
            _, claim = self.held.pop(id_)
            self.unwritten[claim.token] -= 1
            if self.unwritten[claim.token] == 0:
                del self.unwritten[claim.token]
                self.batch_seconds = time.monotonic() - self.claimed_at.pop(claim.token)
                self.keeper.drop(claim)

    def _want(self) -> int:
        """Claim when at most one batch is left ready (so the next one is there in time); never
        once the worker is stopping."""
        if self.shutdown is not None and self.shutdown.stop_claiming(self.batch_seconds):
            return 0
        return self.claim_size if len(self.ready) <= self.claim_size and time.monotonic() >= self._quiet_until else 0

    def _done(self) -> bool:
        """Nothing of ours left and the run finished (for `idle_exit` seconds on end)."""
        if self.held or not self.finished():
            self._finished_since = None
            return False
        self._finished_since = self._finished_since or time.monotonic()
        return time.monotonic() - self._finished_since >= self.idle_exit

    def take(self, count: int, wait: bool) -> list[Request] | None:
        with self._lock:
            while True:
                self._settle()
                if self._stopping():
                    return None  # the engine finishes what it has; close writes it and gives back the rest
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
                if self.suspects:  # nothing else to answer: no more evidence is coming, they are the items' own
                    self.outbox, self.suspects = self.outbox + self.suspects, []
                if self.outbox:
                    self._start(0)
                    continue
                if self._done():
                    return None
                if self.keeper.wait_for_drop(max(0.05, self._quiet_until - time.monotonic())):
                    self._quiet_until = 0.0  # another device of this worker finished or gave back: look now

    def put(self, finished: list[Finished]) -> None:
        """Answers the engine finished; written once a batch's worth is here, or after `flush_seconds`.
        Errors wait until the device answers something: a device whose every answer fails
        (`breaker` in a row: a broken GPU) stops, and those items go back with no attempt spent."""
        with self._lock:
            if finished and not self.outbox:
                self.outbox_since = time.monotonic()
            for request, answer in finished:
                outcome = Outcome(item=self.held[request.key][0], claim=self.held[request.key][1], answer=answer)
                if isinstance(answer, Exception) and not isinstance(answer, UnanswerableItem):
                    self.suspects.append(outcome)
                else:
                    self.outbox += [*self.suspects, outcome]  # the device works: those were the items' own errors
                    self.suspects = []
            if len(self.suspects) >= self.breaker:
                error = self.suspects[-1].answer
                raise DeviceBroken(f"{len(self.suspects)} answers in a row failed on this device, none succeeded "
                                   f"(last: {type(error).__name__}: {str(error)[:200]}): it stops claiming and gives "
                                   "its items back with no attempt spent; the worker's other devices go on")
            self._settle()
            due = len(self.outbox) >= self.claim_size or self.outbox and (
                time.monotonic() - self.outbox_since >= self.flush_seconds)
            if due and self._pending is None:
                self._start(self._want())

    def close(self) -> None:
        """Write what is left and wait for it, then give back what was claimed but not answered
        (when the engine stopped on an error), so other devices and workers take it at once."""
        with self._lock:
            try:
                if 0 < len(self.suspects) < self.breaker:  # the run ended on them: the items' own errors after all
                    self.outbox += self.suspects
                self._settle(block=True)
                if self.outbox:
                    self._start(0)
                    self._settle(block=True)
            finally:
                self._thread.shutdown(wait=True)
                for claim in {claim.token: claim for _, claim in self.held.values()}.values():
                    self.keeper.give_back(claim)
