"""Work-store benchmark: `python bench/store.py [--items N]`.

1. SQLite claim + complete throughput (batch 32) with 1 and 4 processes, and batch 1 vs 32, each
   pair measured side by side in this one run.
2. MongoDB round trips per batch of 32: counted with a pymongo command listener against a real
   server when MONGODB_URI is set; always counted as collection operations against mongomock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, cast

from pymongo import monitoring
from pymongo.collection import Collection

from bench.standins import mongomock_store
from tasks.store import Store
from tasks.store.models import Item, Result
from tasks.store.mongo import MongoStore
from tasks.store.sqlite import SqliteStore

BATCH = 32


def seed_items(n: int) -> list[Item]:
    return [Item(question_id=f"q{i}", question=f"question {i}", reference=str(i)) for i in range(n)]


def drain(db: str, worker: str, batch: int, start: Any) -> None:
    """Claim and complete until nothing is left (after every process is ready)."""
    store = SqliteStore(Path(db))
    start.wait()
    while True:
        claim = store.claim("bench", worker, batch, 60)
        if not claim.items:
            return
        store.complete(claim, {i: Result(response="x" * 200, tokens=64) for i in claim.ids})


def sqlite_rate(items: int, processes: int, batch: int) -> float:
    """Items per second claimed and completed by `processes` processes sharing one file."""
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "bench.db")
        SqliteStore(Path(db)).seed("bench", seed_items(items))
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(processes + 1)
        workers = [context.Process(target=drain, args=(db, f"w{n}", batch, start)) for n in range(processes)]
        for process in workers:
            process.start()
        start.wait()
        started = time.perf_counter()
        for process in workers:
            process.join()
        return items / (time.perf_counter() - started)


class OperationCounter:
    """Counts the operations sent to a collection (mongomock: one call = one round trip)."""

    def __init__(self, collection: Any):
        self._collection, self.calls = collection, Counter[str]()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


class CommandCounter(monitoring.CommandListener):
    """A pymongo command listener: every command the driver sends is one round trip."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.calls[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


def round_trips(store: Store, counter: Any) -> dict[str, int]:
    """Round trips of one claim, one heartbeat and one complete of a batch of 32, in a run of 1,600 items."""
    random.seed(0)  # the claim's random start (a wrap near the run's end would add a round trip)
    store.seed("trips", seed_items(BATCH * 50))  # a run much longer than a batch (near its end a claim may wrap: +1)
    trips = {}
    for step in ("claim", "heartbeat", "complete"):
        counter.calls.clear()
        if step == "claim":
            claim = store.claim("trips", "w", BATCH, 60)
            assert len(claim.items) == BATCH
        elif step == "heartbeat":
            store.heartbeat(claim, 60)
        else:
            store.complete(claim, {i: Result(response="x") for i in claim.ids})
        trips[step] = sum(counter.calls.values())
    return trips


def mongomock_round_trips() -> dict[str, int]:
    store = mongomock_store()
    counter = OperationCounter(store._items)
    store._items = cast(Collection, counter)  # counts what passes through to the collection
    return round_trips(store, counter)


def real_mongodb_round_trips(uri: str) -> dict[str, int]:
    counter = CommandCounter()
    store = MongoStore.connect(uri, event_listeners=[counter])
    name = f"fleetgen_bench_{uuid.uuid4().hex[:8]}"
    try:
        return round_trips(MongoStore(store._db.client[name], store.url), counter)
    finally:
        store._db.client.drop_database(name)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=20000)
    args = parser.parse_args()
    one, four = sqlite_rate(args.items, 1, BATCH), sqlite_rate(args.items, 4, BATCH)
    single = sqlite_rate(args.items // 4, 4, 1)
    print(f"SQLite claim+complete, batch {BATCH}: 1 process {one:,.0f} items/s, 4 processes {four:,.0f} items/s "
          f"(4/1 = {four / one:.2f})")
    print(f"SQLite 4 processes, batch 1: {single:,.0f} items/s (batch {BATCH} / batch 1 = {four / single:.1f}x)")
    trips = mongomock_round_trips()
    print(f"MongoDB operations per batch of {BATCH} (mongomock, counted): "
          + ", ".join(f"{k} {v}" for k, v in trips.items()))
    uri = os.environ.get("MONGODB_URI")
    if uri:
        trips = real_mongodb_round_trips(uri)
        print(f"MongoDB round trips per batch of {BATCH} (real server, command listener): "
              + ", ".join(f"{k} {v}" for k, v in trips.items()))
    else:
        print("MongoDB round trips on a real server: skipped (set MONGODB_URI to measure with a command listener)")


if __name__ == "__main__":
    main()
