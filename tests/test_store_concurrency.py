"""Real multi-process concurrency on the SQLite store: nothing lost, nothing done twice."""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tasks.store.counts import summarize
from tasks.store.models import Item, Result
from tasks.store.sqlite import SqliteStore

ITEMS, PROCESSES, BATCH, LEASE = 2000, 4, 32, 0.5


def claim_until_empty(db: str, worker: str, out: str, start: Any) -> None:
    """Claim batches until the run is finished; complete most, abandon a fifth of them."""
    store, rng = SqliteStore(Path(db)), random.Random(worker)
    start.wait()
    accepted, abandoned = 0, []
    while True:
        claim = store.claim("r", worker, BATCH, LEASE, max_attempts=1000)  # abandoning is no poison here
        if not claim.items:
            summary = summarize(store.counts("r"))
            if summary["pending"] == summary["running"] == 0:
                break
            time.sleep(0.05)
            continue
        if rng.random() < 0.2:
            abandoned.append(claim)
            continue
        accepted += store.complete(claim, {i.id: Result(response=claim.token, worker=worker) for i in claim.items})
    # A claim abandoned long ago was taken over: its late results must all be refused.
    late = sum(store.complete(c, {i: Result(response=c.token, worker=worker) for i in c.ids}) for c in abandoned)
    Path(out).write_text(json.dumps({"accepted": accepted, "late": late, "abandoned": len(abandoned)}))


def test_processes_share_the_work_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "work.db"
    SqliteStore(db).seed("r", questions(ITEMS))
    context = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"w{n}.json" for n in range(PROCESSES)]
    start = context.Barrier(PROCESSES)
    workers = [context.Process(target=claim_until_empty, args=(str(db), f"w{n}", str(outs[n]), start))
               for n in range(PROCESSES)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    reports = [json.loads(out.read_text()) for out in outs]
    assert sum(r["abandoned"] for r in reports) > 0, "the test must abandon some claims"
    assert sum(r["late"] for r in reports) == 0
    assert sum(r["accepted"] for r in reports) == ITEMS
    items = SqliteStore(db).items("r")
    assert len(items) == ITEMS and {i.status for i in items} == {"done"}
    assert all(i.result.response == i.token and i.result.worker == i.worker for i in items)
    assert len({i.worker for i in items}) >= 2  # really concurrent (SQLite may starve a waiting process)


HOLDER = """
import sys, time
from pathlib import Path
from tasks.store.sqlite import SqliteStore
claim = SqliteStore(Path(sys.argv[1])).claim("r", "doomed", 10, float(sys.argv[2]))
print(len(claim.items), flush=True)
time.sleep(600)
"""


def questions(n: int) -> list[Item]:
    return [Item(question_id=f"q{i}", question="question", reference="1") for i in range(n)]


def test_items_of_a_killed_process_are_claimed_again(tmp_path: Path) -> None:
    db = tmp_path / "work.db"
    store = SqliteStore(db)
    store.seed("r", questions(10))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "60"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "10"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert summarize(store.counts("r"))["running"] == 10
    assert store.claim("r", "survivor", 10, 60).items == []  # the lease still runs
    later = SqliteStore(db, clock=lambda: time.time() + 61)  # the same file, a minute on
    assert summarize(later.counts("r"))["expired"] == 10
    claim = later.claim("r", "survivor", 10, 60)
    assert len(claim.items) == 10
    assert later.complete(claim, {i: Result(response="ok") for i in claim.ids}) == 10
    assert {(i.status, i.worker) for i in store.items("r")} == {("done", "survivor")}
