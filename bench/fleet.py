"""Fleet simulation: `python bench/fleet.py [--workers 50] [--items 3200] [--latency-ms 80] [--batch-seconds 10]`.

A fleet of workers x 2 devices (threads) drains one run of the MongoDB store (`tasks/store/mongo.py`,
its real claims and writes) on mongomock, before and after the fleet changes (the store of commit
77d376e loaded from git, with that worker's habits: a fixed idle poll, a progress count and a
Prefect task run per batch; then today's store and worker: claims from a random point, a retry
at once when other workers took every candidate, jittered polls, progress every 30 s per worker,
a task run per device per minute).

Time is simulated: mongomock spends ~50-200 ms of CPU on one command here (it scans every
document), so a real-time fleet would measure mongomock. The threads take turns on a simulated
clock (one runs at a time, so each command is atomic as on a real server, and a lock guards
mongomock besides); each command costs the round trip (`--latency-ms`, Kaggle to Atlas) plus a
server time from a cost model (1 ms, and 1 us per document a whole-run `$group` reads); a device
answers a batch in `--batch-seconds`. Counted: claims that came back empty or short while
enough work was pending, store operations per second, the share of device time spent idle while
work was left, and the Prefect API requests and events per minute the same fleet would send
(per task run and per artifact update as `tests/test_budgets.py` counts them).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import subprocess
import sys
import threading
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

from bench.standins import mongomock_store
from tasks.store import mongo
from tasks.store.models import Claim, Item, Result
from tasks.worker.writes import REPORT_SECONDS

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "77d376e"  # the engines issue: the store and worker before the fleet changes
RUN = "fleet"
EVENTS_PER_TASK_RUN = 3  # Pending, Running, Completed (tests/test_budgets.py); no HTTP request
EVENTS_PER_ARTIFACT_UPDATE, REQUESTS_PER_ARTIFACT_UPDATE = 1, 1
PROGRESS_SECONDS = 30.0  # today's progress artifact refresh, per worker
COMMANDS = ("find", "find_one", "aggregate", "bulk_write", "update_many", "update_one", "count_documents")
SERVER_SECONDS, SCAN_SECONDS_PER_DOCUMENT = 0.001, 1e-6


class SimulatedTime:
    """Threads taking turns on a simulated clock: one runs at a time; `sleep` hands the turn to
    whichever thread wakes next."""

    def __init__(self, threads: int):
        self.now = 0.0
        self._lock = threading.Lock()
        self._queue: list[tuple[float, int, threading.Event]] = []
        self._order = itertools.count()
        self._running = threads

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        wake = threading.Event()
        with self._lock:
            heapq.heappush(self._queue, (self.now + max(0.0, seconds), next(self._order), wake))
            self._running -= 1
            self._next()
        wake.wait()

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            self._next()

    def _next(self) -> None:
        if self._running == 0 and self._queue:
            self.now, _, wake = heapq.heappop(self._queue)
            self._running = 1
            wake.set()


class RemoteCollection:
    """A mongomock collection reached over a network: each command waits its round trip and server time."""

    def __init__(self, collection: Any, time: SimulatedTime, latency: float, run_size: int, counts: Counter):
        self._collection, self._time, self._latency, self._run_size = collection, time, latency, run_size
        self.counts, self._lock = counts, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if name not in COMMANDS:
            return attr

        def command(*args: Any, **kwargs: Any) -> Any:
            self._time.sleep(self._latency / 2)
            with self._lock:  # mongomock is not thread-safe; a server runs each command atomically
                result = attr(*args, **kwargs)
                result = list(result) if name in ("find", "aggregate") else result
            self.counts[name] += 1
            scanned = self._run_size if name == "aggregate" else 0  # a whole-run $group (progress counts)
            self._time.sleep(self._latency / 2 + SERVER_SECONDS + scanned * SCAN_SECONDS_PER_DOCUMENT)
            return Listed(result) if name == "find" else result

        return command


class Listed:
    """A find's documents, already fetched, with the cursor methods the store calls on them."""

    def __init__(self, docs: list[dict[str, Any]]):
        self.docs = docs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.docs)

    def sort(self, key: str, direction: int = 1) -> Listed:
        return Listed(sorted(self.docs, key=lambda doc: (doc.get(key) is not None, doc.get(key) or 0),
                             reverse=direction < 0))

    def limit(self, count: int) -> Listed:
        return Listed(self.docs[:count])


def old_store_module() -> types.ModuleType:
    """tasks/store/mongo.py as it was at BEFORE_COMMIT, from git."""
    source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:tasks/store/mongo.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("mongo_before")
    exec(compile(source, f"{BEFORE_COMMIT}:tasks/store/mongo.py", "exec"), module.__dict__)
    return module


@dataclass
class Tally:
    claims: int = 0
    empty_while_pending: int = 0
    short_while_pending: int = 0
    busy: float = 0.0  # device seconds spent answering
    idle_while_work_left: float = 0.0
    task_runs: int = 0
    artifact_updates: int = 0
    ended_at: float = 0.0  # when the last device left


@dataclass
class Fleet:
    before: bool
    store: Any
    time: SimulatedTime
    items: int
    batch: int
    batch_seconds: float
    poll_seconds: float
    lease_seconds: float
    devices_left: int
    rng: random.Random
    tally: Tally = field(default_factory=Tally)
    done: int = 0

    def pending(self) -> int:  # the simulation's own look, not a counted command
        return self.store._items._collection.count_documents({"run": RUN, "status": "pending"})

    def claim(self, worker: str) -> Claim:
        claim = self.store.claim(RUN, worker, self.batch, self.lease_seconds)
        self.tally.claims += 1
        if len(claim.items) < self.batch:
            left = self.pending()
            if not claim.items and left:
                self.tally.empty_while_pending += 1
            elif claim.items and left >= self.batch - len(claim.items):
                self.tally.short_while_pending += 1
        return claim

    def write(self, claim: Claim) -> None:
        if claim.items:
            right = Result(response="#### 7", predicted="7", correct=True)
            self.store.complete(claim, {item.id: right for item in claim.items})
            self.done += len(claim.items)

    def finished(self) -> bool:
        return all(row["status"] in ("done", "failed") for row in self.store.counts(RUN))

    def device(self, worker: str, start: float) -> None:
        """One device as the worker runs it: while it answers a batch, one store call writes the
        last batch and claims the next; with nothing claimed it polls until the run is finished."""
        try:
            self.time.sleep(start)
            last_report, current, answered = -REPORT_SECONDS, self.claim(worker), Claim("", worker)
            while True:
                began = self.time.now
                if self.before or began - last_report >= REPORT_SECONDS:  # the call as a Prefect task run
                    self.tally.task_runs, last_report = self.tally.task_runs + 1, began
                if current.items:
                    self.write(answered)
                    if self.before:
                        self.store.counts(RUN)  # the progress artifact after every batch
                        self.tally.artifact_updates += 1
                    upcoming = self.claim(worker)
                    seconds = self.batch_seconds * len(current.items) / self.batch
                    self.time.sleep(seconds - (self.time.now - began))
                    self.tally.busy += seconds
                    answered, current = current, upcoming
                    continue
                self.write(answered)
                answered = Claim("", worker)
                if self.finished():
                    self.devices_left -= 1
                    self.tally.ended_at = self.time.now
                    return
                poll = self.poll_seconds * (1 if self.before else self.rng.uniform(0.5, 1.5))
                self.time.sleep(poll)
                if self.done < self.items:
                    self.tally.idle_while_work_left += self.time.now - began
                current = self.claim(worker)
        finally:
            self.time.leave()

    def progress(self) -> None:
        """Today's progress artifact: the fleet's counts every 30 s, per worker, while its devices work."""
        try:
            while self.devices_left:
                self.time.sleep(PROGRESS_SECONDS * self.rng.uniform(0.9, 1.1))
                if self.devices_left:
                    self.store.counts(RUN)
                    self.tally.artifact_updates += 1
        finally:
            self.time.leave()


def simulate(*, before: bool, workers: int, items: int, batch: int, batch_seconds: float, latency: float,
             start_spread: float, seed: int = 0) -> dict[str, Any]:
    """One fleet draining one run. Every random number (the store's too) comes from one generator seeded
    with `seed`, and the threads take turns, so a run comes out the same on any machine under any load."""
    rng = random.Random(seed)
    store_module = old_store_module() if before else mongo
    with mock.patch.object(store_module, "random", rng, create=True):  # the store before drew none
        return _simulate(before=before, store_class=store_module.MongoStore, rng=rng, workers=workers, items=items,
                         batch=batch, batch_seconds=batch_seconds, latency=latency, start_spread=start_spread)


def _simulate(*, before: bool, store_class: type, rng: random.Random, workers: int, items: int, batch: int,
              batch_seconds: float, latency: float, start_spread: float) -> dict[str, Any]:
    devices = 2 * workers
    progress_threads = 0 if before else workers
    time = SimulatedTime(devices + progress_threads)
    plain = mongomock_store(clock=time.clock)
    store = store_class(plain._db, clock=time.clock) if before else plain
    store.seed(RUN, [Item(question_id=f"q{n:06d}", question=f"Question {n}", reference="7") for n in range(items)])
    counts: Counter[str] = Counter()
    store._items = RemoteCollection(store._items, time, latency, items, counts)
    lease = 600.0
    fleet = Fleet(before=before, store=store, time=time, items=items, batch=batch, batch_seconds=batch_seconds,
                  poll_seconds=min(lease / 4, 15.0), lease_seconds=lease, devices_left=devices, rng=rng)
    threads = [threading.Thread(target=fleet.device, args=(f"w{n // 2}", rng.uniform(0, start_spread)))
               for n in range(devices)]
    threads += [threading.Thread(target=fleet.progress) for _ in range(progress_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally = fleet.tally
    seconds, ops = tally.ended_at, sum(counts.values())
    minutes = seconds / 60
    return {
        "seconds": round(seconds, 1), "done": fleet.done, "claims": tally.claims,
        "empty_while_pending": tally.empty_while_pending, "short_while_pending": tally.short_while_pending,
        "ops_per_second": round(ops / seconds, 1), "commands": dict(counts),
        "idle_share": round(tally.idle_while_work_left / (tally.idle_while_work_left + tally.busy), 3),
        "events_per_minute": round((tally.task_runs * EVENTS_PER_TASK_RUN
                                    + tally.artifact_updates * EVENTS_PER_ARTIFACT_UPDATE) / minutes),
        "requests_per_minute": round(tally.artifact_updates * REQUESTS_PER_ARTIFACT_UPDATE / minutes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=50, help="worker processes, 2 devices each")
    parser.add_argument("--items", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-seconds", type=float, default=10.0, help="a device answers a batch in this long")
    parser.add_argument("--latency-ms", type=float, default=80.0, help="one round trip to the database")
    parser.add_argument("--start-spread", type=float, default=5.0, help="workers start within this many seconds")
    args = parser.parse_args()
    common = dict(workers=args.workers, items=args.items, batch=args.batch_size, batch_seconds=args.batch_seconds,
                  latency=args.latency_ms / 1000, start_spread=args.start_spread)
    print(f"{args.workers} workers x 2 devices, {args.items:,} items, batch {args.batch_size} in "
          f"{args.batch_seconds:g} s, {args.latency_ms:g} ms round trips (simulated time)")
    print("| | sim. s | claims | empty while pending | short while pending | store ops/s | idle share | "
          "Prefect events/min | Prefect requests/min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, before in ((f"before ({BEFORE_COMMIT})", True), ("after", False)):
        r = simulate(before=before, **common)
        print(f"| {label} | {r['seconds']} | {r['claims']} | {r['empty_while_pending']} | {r['short_while_pending']} "
              f"| {r['ops_per_second']} | {r['idle_share']:.1%} | {r['events_per_minute']} | "
              f"{r['requests_per_minute']} |", flush=True)
        print(f"  commands: {r['commands']}, items done {r['done']:,}", file=sys.stderr)


if __name__ == "__main__":
    main()
