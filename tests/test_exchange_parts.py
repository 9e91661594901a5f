"""The exchange's parts, one job each, and the store calls it makes: what is claimed until it
is written, the outbox, the failure breaker, idle polling, and the one retry policy and
one-way write of `writes.py` (on every store backend)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.config import WorkerConfig
from tasks.engines import Generation, Request, UnanswerableItem
from tasks.store import Store
from tasks.store.models import Claim, Item, Result
from tasks.store.sqlite import SqliteStore
from tasks.worker import writes
from tasks.worker.claims import ClaimedWork
from tasks.worker.loop import run_finished
from tasks.worker.outbox import DeviceBroken, FailureBreaker, Outbox
from tasks.worker.polling import IdlePolling
from tasks.worker.results import Outcome
from tasks.worker.writes import StoreCalls
from tests.support import ScriptedEngine
from tests.test_store import statuses_by_sample, until_correct_run


def claim(token: str, size: int) -> Claim:
    return Claim(token, "w", [Item(question_id=f"{token}-{n}", question="q", reference="1", id=f"{token}-{n}")
                              for n in range(size)])


def outcome(answer: Generation | Exception, id_: str = "x") -> Outcome:
    return Outcome(item=Item(question_id=id_, question="q", reference="1", id=id_), claim=claim("t", 0), answer=answer)


def test_claimed_work_hands_out_requests_and_keeps_each_claim_until_its_last_item_is_written() -> None:
    work = ClaimedWork(lambda item: Request(key=item.id, prompt=item.question))
    work.add(claim("a", 2))
    work.add(claim("b", 1))
    assert [r.key for r in work.take(2)] == ["a-0", "a-1"] and [r.key for r in work.take(5)] == ["b-0"]
    answered = {key: work.outcome(Request(key=key, prompt="q"), Generation("1", 1, "stop")) for key in work.held}
    assert answered["a-1"].claim.token == "a"
    assert work.written([answered["a-0"], answered["b-0"]]) == [claim("b", 1)]  # b is all written; a holds a-1
    assert [c.token for c in work.claims()] == ["a"] and set(work.held) == {"a-1"}
    work.add(Claim("c", "w", [Item(question_id="a-1", question="q", reference="1", id="a-1")]))  # a-1 given back
    # by a write not taken in yet, and claimed again by the other lane
    assert [c.token for c in work.written([answered["a-1"]])] == ["a"] and work.batch_seconds >= 0
    assert set(work.held) == {"a-1"} and work.held["a-1"][1].token == "c"  # the new claim's, still held


def test_the_outbox_is_due_at_a_batch_or_after_flush_seconds() -> None:
    outbox = Outbox(batch=3, flush_seconds=0.05)
    assert not outbox.due() and not outbox
    outbox.add([outcome(Generation("1", 1, "stop"))])
    assert not outbox.due()
    outbox.since -= 1.0  # the first answer has waited longer than flush_seconds
    assert outbox.due()
    outbox.add([outcome(Generation("1", 1, "stop")) for _ in range(2)])
    assert len(outbox.drain()) == 3 and not outbox
    outbox.add([outcome(Generation("1", 1, "stop")) for _ in range(3)])
    assert outbox.due()  # a batch's worth, at once


def test_the_breaker_holds_errors_until_the_device_answers_and_trips_when_it_never_does() -> None:
    breaker = FailureBreaker(limit=3)
    error, answer = outcome(RuntimeError("oom"), "e"), outcome(Generation("1", 1, "stop"), "g")
    assert breaker.sort([error]) == [] and not breaker.tripped  # a suspect: maybe the device
    assert [o.item.id for o in breaker.sort([answer])] == ["e", "g"]  # the device works: the item's own error
    unanswerable = outcome(UnanswerableItem("too long"), "u")
    assert breaker.sort([unanswerable]) == [unanswerable]  # never the device's fault
    assert breaker.sort([error]) == [] and breaker.release() == [error]  # no more evidence coming
    breaker.sort([error, error, error])
    with pytest.raises(DeviceBroken, match="3 answers in a row failed"):
        breaker.check()
    assert breaker.release() == []  # tripped: they go back with no attempt spent, not written


def test_idle_polling_waits_jittered_and_is_done_after_idle_exit() -> None:
    finished = [False]
    polling = IdlePolling(poll_seconds=10, idle_exit=0.0, finished=lambda: finished[0])
    assert polling.may_claim()
    polling.nothing_to_claim()
    assert not polling.may_claim() and 5 - 0.1 <= polling.seconds_to_wait() <= 15
    polling.look_now()
    assert polling.may_claim()
    assert not polling.done(holding=False)  # the run is not finished
    finished[0] = True
    assert not polling.done(holding=True) and polling.done(holding=False)
    later = IdlePolling(poll_seconds=1, idle_exit=60.0, finished=lambda: True)
    assert not later.done(holding=False)  # finished, but not for idle_exit seconds yet
    later.finished_since = time.monotonic() - 61
    assert later.done(holding=False)


def test_a_store_call_grades_writes_and_claims_in_one_way(store: Store) -> None:
    store.ensure_run("r", {})
    store.seed("r", [Item(question_id=f"q{n}", question="q", reference="7") for n in range(3)])
    reports = []
    calls = StoreCalls(store=store, config=WorkerConfig(run="r", worker="w"), engine=ScriptedEngine({}),
                       on_report=reports.append)
    _, first = calls([], 2)
    answers = [Generation("#### 7", 2, "stop", seconds=0.5), RuntimeError("oom")]
    report, second = calls([Outcome(item=i, claim=first, answer=a) for i, a in zip(first.items, answers)], 2)
    assert (report.done, report.failed, report.items) == (1, 1, 2) and reports == [report]
    assert second.items and first.ids[0] not in second.ids  # the next batch, in the same call
    done = next(i for i in store.items("r") if i.id == first.ids[0])
    assert (done.status, done.result.correct, done.result.predicted) == ("done", True, "7")
    assert not run_finished(store, "r")


def test_an_empty_claim_settles_a_question_left_waiting_and_the_finished_check_only_reads(store: Store) -> None:
    until_correct_run(store, questions=1, samples=3)
    calls = StoreCalls(store=store, config=WorkerConfig(run="u", worker="w"), engine=ScriptedEngine({}))
    _, first = calls([], 4)
    first.items[0].metadata = None  # as if the write's second half had failed: nothing settled
    store.complete(first, {first.ids[0]: Result(response="x", correct=False)})
    before = statuses_by_sample(store)
    assert not run_finished(store, "u") and statuses_by_sample(store) == before == {
        "q0/0": "done", "q0/1": "waiting", "q0/2": "waiting"}  # asking changed nothing
    _, empty = calls([], 4)
    assert empty.items == [] and statuses_by_sample(store)["q0/1"] == "pending"
    _, next_claim = calls([], 4)
    assert [i.sample for i in next_claim.items] == [1]


def test_a_plain_run_is_finished_when_nothing_is_pending_or_running(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "w.db")
    store.seed("r", [Item(question_id="q", question="q", reference="1")])
    assert not run_finished(store, "r")
    taken = store.claim("r", "w", 1, 60)
    store.fail(taken, taken.ids, "bad", max_attempts=1)
    assert run_finished(store, "r")  # failed items stay failed


def test_the_two_lanes_asking_at_once_make_one_task_run_a_minute(tmp_path: Path, monkeypatch) -> None:
    """A claim and a write asking together whether their call is the minute's Prefect task run:
    one is (the free tier's event budget counts one a minute per device)."""
    store = SqliteStore(tmp_path / "s.db")
    store.ensure_run("r", {})
    calls = StoreCalls(store=store, config=WorkerConfig(run="r", worker="w"), engine=ScriptedEngine({}),
                       task_runs=True)
    slow_clock = SimpleNamespace(monotonic=lambda: (time.sleep(0.3), time.monotonic())[1], sleep=time.sleep)
    monkeypatch.setattr(writes, "time", slow_clock)  # reading the clock takes a while: the lanes overlap
    together = threading.Barrier(4)

    def ask(_: int) -> bool:
        together.wait()
        return calls._task_run_due()

    with ThreadPoolExecutor(4) as lanes:
        assert list(lanes.map(ask, range(4))).count(True) == 1
    assert not calls._task_run_due()  # and not again within the minute
