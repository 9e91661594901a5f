"""One conformance suite for every store backend: SQLite (real), mongomock, real MongoDB if set.
Leases run on an injected clock, so expiry needs no sleeping and holds against a remote server."""

from __future__ import annotations

import os
import time

import pytest
from pymongo.errors import OperationFailure

from bench.standins import mongomock_store
from bench.store import mongomock_round_trips, real_mongodb_round_trips
from tasks.errors import UserError
from tasks.store import Store, open_store
from tasks.store.counts import summarize
from tasks.store.models import Item, Result
from tasks.store.mongo import MongoStore, claimable
from tasks.store.quota import quota_warning
from tasks.store.sqlite import SqliteStore
from tests.support import FakeClock


def items(n: int, stage: int = 0) -> list[Item]:
    return [Item(question_id=f"q{i:03d}", question=f"question {i}", reference=str(i), stage=stage) for i in range(n)]


def answers(ids: list[str], text: str = "x") -> dict[str, Result]:
    return {id_: Result(response=text) for id_ in ids}


def test_seed_is_idempotent(store: Store) -> None:
    assert store.seed("r", items(10)) == 10
    assert store.seed("r", items(12)) == 2
    assert len(store.items("r")) == 12
    assert store.items("other") == []


def test_seed_keeps_given_results_as_done(store: Store) -> None:
    given = Result(response="it is 4", predicted="4", correct=True)
    store.seed("r", [Item(question_id="q1", question="question", reference="4", status="done", result=given),
                     Item(question_id="q1", question="question", reference="4", sample=1)])
    done, pending = store.items("r")
    assert (done.status, done.result, pending.status, pending.sample) == ("done", given, "pending", 1)


def test_runs_are_recorded_once(store: Store) -> None:
    store.ensure_run("a", {"samples": 1})
    store.ensure_run("b", {})
    store.ensure_run("a", {"samples": 2})
    assert store.runs() == ["a", "b"]


def test_a_runs_decontamination_report_is_kept_and_replaced(store: Store) -> None:
    store.ensure_run("a", {"split": "train"})
    assert store.contamination("a") is None
    first = {"checked": 3, "test_sets": [{"name": "gsm8k/test", "questions": 1319}],
             "matches": [{"question_id": "q.1", "test_id": "gsm8k/test/7", "check": "8-gram"}]}
    store.set_contamination("a", first)
    assert store.contamination("a") == first and store.run_config("a") == {"split": "train"}
    store.set_contamination("a", {**first, "matches": []})
    assert store.contamination("a")["matches"] == [] and store.contamination("b") is None


def test_an_sqlite_store_from_before_decontamination_gains_its_column(tmp_path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as db:  # the runs table as earlier versions made it
        db.execute("CREATE TABLE runs (name TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL)")
        db.execute("INSERT INTO runs VALUES ('old', '{}', 1.0)")
    store = SqliteStore(tmp_path / "old.db")
    store.ensure_run("new", {})
    store.set_contamination("old", {"matches": []})
    assert store.runs() == ["old", "new"] and store.contamination("old") == {"matches": []}


def test_claims_are_disjoint_and_marked_running(store: Store) -> None:
    store.seed("r", items(10))
    first = store.claim("r", "w1", 4, 60)
    second = store.claim("r", "w2", 4, 60)
    third = store.claim("r", "w3", 4, 60)
    assert [len(c.items) for c in (first, second, third)] == [4, 4, 2]
    ids = first.ids + second.ids + third.ids
    assert len(set(ids)) == 10
    assert all(i.status == "running" and i.worker == "w1" and i.token == first.token for i in first.items)
    assert len({first.token, second.token, third.token}) == 3
    assert store.claim("r", "w4", 4, 60).items == []


def test_expired_lease_is_taken_over_and_old_owner_cannot_write(store: Store, clock: FakeClock) -> None:
    store.seed("r", items(3))
    old = store.claim("r", "dead", 3, 10)
    clock.advance(9)
    assert store.claim("r", "live", 3, 60).items == []  # the lease still runs
    clock.advance(2)
    new = store.claim("r", "live", 3, 60)
    assert sorted(new.ids) == sorted(old.ids)
    assert store.heartbeat(old, 60) == 0
    assert store.complete(old, answers(old.ids, "stale")) == 0
    assert store.fail(old, old.ids, "stale", 3) == 0
    assert store.release(old) == 0
    assert store.complete(new, answers(new.ids, "fresh")) == 3
    assert {(i.status, i.worker, i.result.response) for i in store.items("r")} == {("done", "live", "fresh")}


def test_heartbeat_keeps_the_lease(store: Store, clock: FakeClock) -> None:
    store.seed("r", items(2))
    claim = store.claim("r", "w", 2, 10)
    clock.advance(8)
    assert store.heartbeat(claim, 10) == 2
    clock.advance(8)  # 16 s after the claim, 8 s after the beat
    assert store.claim("r", "other", 2, 60).items == []
    clock.advance(3)
    assert len(store.claim("r", "other", 2, 60).items) == 2


def test_complete_stores_results_once(store: Store) -> None:
    store.seed("r", items(3))
    claim = store.claim("r", "w", 3, 60)
    first_two = sorted(claim.items, key=lambda i: i.question_id)[:2]
    results = {i.id: Result(response=f"answer {i.question_id}", tokens=7, finish_reason="stop") for i in first_two}
    assert store.complete(claim, results) == 2
    assert store.complete(claim, results) == 0
    by_id = {i.question_id: i for i in store.items("r")}
    assert by_id["q000"].status == "done"
    assert by_id["q000"].result == Result(response="answer q000", tokens=7, finish_reason="stop")
    assert by_id["q002"].status == "running"


def test_complete_many_writes_several_claims_at_once_through_their_tokens(store: Store, clock: FakeClock) -> None:
    store.seed("r", items(6))
    first, second = store.claim("r", "w", 3, 10), store.claim("r", "w", 3, 60)
    clock.advance(11)
    taken = store.claim("r", "other", 3, 60)  # the first claim's lease ran out: its items are someone else's now
    parts = [(first, answers(first.ids, "late")), (second, answers(second.ids, "fresh"))]
    assert store.complete_many(parts) == 3 and store.complete_many([]) == 0
    done = {i.id: i.result.response for i in store.items("r") if i.status == "done"}
    assert set(done) == set(second.ids) and set(done.values()) == {"fresh"} and sorted(taken.ids) == sorted(first.ids)


def test_fail_retries_then_gives_up_with_the_error(store: Store) -> None:
    store.seed("r", items(1))
    for attempt in (1, 2):
        claim = store.claim("r", "w", 1, 60)
        assert store.fail(claim, claim.ids, f"boom {attempt}", max_attempts=3) == 1
        (item,) = store.items("r")
        assert (item.status, item.attempts, item.error, item.token) == ("pending", attempt, f"boom {attempt}", None)
    claim = store.claim("r", "w", 1, 60)
    assert store.fail(claim, claim.ids, "boom 3", max_attempts=3) == 1
    (item,) = store.items("r")
    assert (item.status, item.attempts, item.error) == ("failed", 3, "boom 3")
    assert store.claim("r", "w", 1, 60).items == []


def test_release_gives_items_back(store: Store) -> None:
    store.seed("r", items(2))
    claim = store.claim("r", "w", 2, 60)
    assert store.release(claim) == 2
    assert {(i.status, i.worker, i.attempts) for i in store.items("r")} == {("pending", None, 0)}
    assert len(store.claim("r", "w2", 5, 60).items) == 2


def test_counts_by_status_stage_and_worker(store: Store, clock: FakeClock) -> None:
    store.seed("r", items(6))
    store.seed("other", items(3))
    done = store.claim("r", "w1", 2, 60)
    store.complete(done, answers(done.ids))
    store.claim("r", "w2", 1, 60)
    store.claim("r", "w3", 1, 5)
    failed = store.claim("r", "w1", 1, 60)
    store.fail(failed, failed.ids, "oom", max_attempts=1)
    store.seed("r", items(2, stage=1))  # a refine round queued later
    clock.advance(10)
    summary = summarize(store.counts("r"))
    assert {k: summary[k] for k in ("total", "pending", "running", "done", "failed", "expired")} == {
        "total": 8, "pending": 3, "running": 2, "done": 2, "failed": 1, "expired": 1}
    assert summary["stages"]["1"]["pending"] == 2 and summary["stages"]["0"]["total"] == 6
    assert summary["workers"]["w1"] == {"total": 3, "pending": 0, "running": 0, "done": 2, "failed": 1, "expired": 0}
    assert summary["workers"]["w3"]["expired"] == 1


def test_devices_sums_each_workers_device_answers(store: Store) -> None:
    store.seed("r", items(6))
    store.seed("other", items(2))
    for worker, device, n, finished in [("w1", "cuda:0", 2, 100.0), ("w1", "cuda:1", 1, 50.0), ("w2", "cpu", 2, 70.0)]:
        claim = store.claim("r", worker, n, 60)
        store.complete(claim, {id_: Result(response="x", tokens=10 * (i + 1), seconds=0.5, worker=worker,
                                           device=device, finished=finished + i) for i, id_ in enumerate(claim.ids)})
    seeded = store.claim("r", "w3", 1, 60)
    store.complete(seeded, answers(seeded.ids))  # an answer brought from elsewhere: no device, not counted
    claim = store.claim("other", "w1", 2, 60)
    store.complete(claim, {id_: Result(response="x", tokens=5, seconds=1, worker="w1", device="cuda:0")
                           for id_ in claim.ids})
    assert store.devices("r") == [
        {"worker": "w1", "device": "cuda:0", "done": 2, "tokens": 30, "seconds": 1.0, "last": 101.0},
        {"worker": "w1", "device": "cuda:1", "done": 1, "tokens": 10, "seconds": 0.5, "last": 50.0},
        {"worker": "w2", "device": "cpu", "done": 2, "tokens": 30, "seconds": 1.0, "last": 71.0}]


def test_a_mongodb_claim_that_others_beat_to_some_items_reads_back_what_it_got() -> None:
    store = mongomock_store()
    store.seed("r", items(4))
    bulk_write = store._items.bulk_write

    def others_first(ops, **kwargs):  # another worker takes one candidate in between
        store._items.update_one({"question_id": "q000"}, {"$set": {"status": "running", "token": "other",
                                                                  "lease_expires": store.clock() + 60}})
        return bulk_write(ops, **kwargs)

    store._items.bulk_write = others_first
    claim = store.claim("r", "w", 4, 60)
    assert sorted(i.question_id for i in claim.items) == ["q001", "q002", "q003"]
    assert all(i.token == claim.token and i.status == "running" for i in claim.items)


def test_an_item_whose_worker_dies_every_time_fails_after_max_attempts(store: Store, clock: FakeClock) -> None:
    store.seed("r", items(2))
    once = store.claim("r", "w", 1, 60)
    store.fail(once, once.ids, "oom", max_attempts=3)  # one real failure of one of them
    for attempt in (1, 2):  # each holder dies; taking the lease over spends an attempt
        store.claim("r", f"dead{attempt}", 2, 10, max_attempts=3)
        clock.advance(11)
    poisoned = {i.id: i for i in store.items("r")}.pop(once.ids[0])
    (other,) = [i for i in store.items("r") if i.id != poisoned.id]
    assert store.claim("r", "live", 2, 60, max_attempts=3).ids == [other.id]
    poisoned, other = ({i.id: i for i in store.items("r")}[id_] for id_ in (poisoned.id, other.id))
    assert (poisoned.status, poisoned.attempts) == ("failed", 3)
    assert poisoned.error == "gave up after 3 attempts: the lease expired (the worker died while holding it)"
    assert (other.status, other.attempts, other.worker) == ("running", 2, "live")
    assert store.claim("r", "w", 2, 60).items == []


def test_a_notebook_whose_clock_runs_ahead_does_not_take_over_live_leases() -> None:
    """MongoDB leases are timed with the server's clock (read from `hello` at connect)."""
    import datetime

    store = mongomock_store()
    store.seed("r", items(2))
    live = store.claim("r", "live", 2, 60)
    db, true_time = store._db, time.time
    ahead = lambda: true_time() + 3600  # noqa: E731
    server_hello = {"ok": 1.0, "localTime": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)}
    db.command = lambda name, *args, **kwargs: server_hello if name == "hello" else None
    fast = MongoStore(db, clock=ahead)
    assert -3601 < fast.clock_offset < -3599
    assert fast.claim("r", "fast", 2, 60).items == [] and store.heartbeat(live, 60) == 2


def test_claims_on_mongodb_start_at_random_points_so_a_fleet_seldom_collides() -> None:
    store = mongomock_store()
    store.seed("r", items(400))
    candidates = [{doc["_id"] for doc in store._candidates("r", store.now(), 16)} for _ in range(20)]
    overlapping = sum(len(a & b) for i, a in enumerate(candidates) for b in candidates[i + 1:])
    assert all(len(c) == 16 for c in candidates) and overlapping < 16 * 20  # in order, every pair would share all 16


def test_an_sqlite_claim_reads_the_index_not_the_run(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    for branch in ("status = 'pending' ORDER BY id LIMIT 16", "status = 'running' AND lease_expires < 5"):
        (plan,) = store._db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM items WHERE run = 'r' AND {branch}").fetchall()
        assert "USING COVERING INDEX" in plan[-1] and "TEMP B-TREE" not in plan[-1]
    store.close()


def test_unknown_url_scheme_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"Unknown store URL 'postgres://me:\*\*\*@db/x'"):
        open_store("postgres://me:hunter2@db/x")


def test_default_store_is_sqlite_in_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONGODB_URI", raising=False)
    store = open_store(None)
    assert store.url == f"sqlite:///{tmp_path / 'fleetgen.db'}" and (tmp_path / "fleetgen.db").exists()
    store.close()


def test_a_batch_of_32_costs_few_round_trips() -> None:
    trips = mongomock_round_trips()
    assert trips["claim"] == 2 and trips["heartbeat"] == 1 and trips["complete"] == 1


def test_a_batch_of_32_costs_few_round_trips_on_a_real_server() -> None:
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip("needs MONGODB_URI (the mongomock count ran instead)")
    trips = real_mongodb_round_trips(uri)
    assert trips["claim"] == 2 and trips["heartbeat"] == 1 and trips["complete"] == 1


def test_a_damaged_or_foreign_sqlite_file_is_refused_with_what_to_do(tmp_path) -> None:
    (tmp_path / "notes.db").write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(UserError, match="not an SQLite file, or a damaged one"):
        open_store(f"sqlite:///{tmp_path / 'notes.db'}")
    store = open_store(f"sqlite:///{tmp_path / 'work.db'}")
    store.seed("r", items(3000))
    store.close()
    data = bytearray((tmp_path / "work.db").read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\xff" * 4096  # one page in the middle overwritten
    (tmp_path / "work.db").write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged one: restore it from a copy"):
        open_store(f"sqlite:///{tmp_path / 'work.db'}")


def test_status_warns_as_the_database_nears_the_free_tier_quota(tmp_path) -> None:
    store = mongomock_store()
    stats = {"dataSize": 400 * 2**20, "indexSize": 40 * 2**20, "objects": 200_000, "avgObjSize": 2100}
    atlas: dict = {}

    def command(name, *args, **kwargs):  # as a server answers: atlasSize on Atlas' free and Flex tiers only
        if name == "dbStats":
            return stats
        if name == {"atlasSize": 1} and atlas:
            return atlas
        raise OperationFailure(f"no such command: {name}", code=59)

    store._db.command = command
    warning = quota_warning(store.storage())
    assert "holds 440 MB of the free tier's 512 MB" in warning and "about 35,951 more items fit" in warning
    stats["dataSize"] = 300 * 2**20
    assert quota_warning(store.storage()) is None
    # on Atlas the quota counts every database of the cluster: atlasSize, not this database's dbStats
    atlas.update(atlasSize=450 * 2**20, totals={"objects": 210_000, "avgObjSize": 2200})
    assert store.storage()["counted"] == "atlasSize"
    assert "holds 450 MB of the free tier's 512 MB" in quota_warning(store.storage())
    assert open_store(f"sqlite:///{tmp_path / 'x.db'}").storage() is None  # a local file has no quota


def test_evaluate_reads_the_run_without_its_long_texts(store: Store) -> None:
    store.seed("r", [Item(question_id="q", question="a long question " * 50, reference="7", metadata={"level": 2})])
    claim = store.claim("r", "w", 1, 60)
    store.complete(claim, {claim.ids[0]: Result(response="a long answer " * 50, predicted="7", correct=True, tokens=9)})
    (light,) = store.items("r", texts=False)
    assert (light.question, light.result.response, light.previous) == ("", "", None)
    assert (light.reference, light.result.predicted, light.result.correct, light.result.tokens) == ("7", "7", True, 9)
    assert light.metadata == {"level": 2} and light.status == "done"
    (full,) = store.items("r")
    assert full.question.startswith("a long question") and full.result.response.startswith("a long answer")


def test_the_longest_prompts_still_to_answer_are_found_by_the_store(store: Store) -> None:
    store.seed("r", [Item(question_id="short", question="1+1?", reference="2"),
                     Item(question_id="long", question="a long question " * 40, reference="7"),
                     Item(question_id="retried", question="1+2?", reference="3", stage=1, previous="an answer " * 80),
                     Item(question_id="done", question="the longest question of all " * 40, reference="1")])
    claim = store.claim("r", "w", 4, 60)
    done = next(item for item in claim.items if item.question_id == "done")
    store.complete(claim, {done.id: Result(response="#### 1", correct=True)})  # answered: no prompt to send
    longest = store.longest_prompts("r", 2)
    assert [item.question_id for item in longest] == ["retried", "long"]  # question and previous answer count
    assert longest[0].previous == "an answer " * 80 and longest[1].question == "a long question " * 40
    assert [item.question_id for item in store.longest_prompts("r", 5)] == ["retried", "long", "short"]


def test_a_worker_holds_at_most_three_connections_per_mongodb_server(monkeypatch) -> None:
    import mongomock

    made: list[dict] = []

    def client(url, **options):  # no server here: the options the worker's client is made with
        made.append(options)
        return mongomock.MongoClient()

    monkeypatch.setattr("tasks.store.mongo.MongoClient", client)
    MongoStore.connect("mongodb://user:pw@db.example/x").close()
    # one monitoring connection per server ("poll": no second one for round-trip times), two pooled ones
    assert made[0]["maxPoolSize"] == 2 and made[0]["serverMonitoringMode"] == "poll"


def test_claims_use_the_claim_index_on_a_real_server() -> None:
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip("needs MONGODB_URI: mongomock has no query planner (SQLite's plan is checked above)")
    store = MongoStore.connect(uri)
    store = MongoStore(store._db.client[f"fleetgen_test_{os.getpid()}"], store.url)
    try:
        store.seed("r", items(300))
        cursor = store._items.find(claimable("r", store.now(), 0.5)).sort("r", 1).limit(16)
        plan = str(cursor.explain()["queryPlanner"]["winningPlan"])
        assert "IXSCAN" in plan and "COLLSCAN" not in plan
    finally:
        store._db.client.drop_database(store._db.name)
        store.close()


def test_a_mongodb_claim_whose_read_back_fails_gives_its_items_back_at_once() -> None:
    from pymongo.errors import AutoReconnect

    store = mongomock_store()
    store.seed("r", items(4))
    bulk_write, find = store._items.bulk_write, store._items.find

    def others_first(ops, **kwargs):  # another worker takes one candidate in between: a read-back follows
        store._items.update_one({"question_id": "q000"}, {"$set": {"status": "running", "token": "other",
                                                                  "lease_expires": store.clock() + 60}})
        return bulk_write(ops, **kwargs)

    def read_back_lost(query, *args, **kwargs):
        if "token" in query:
            raise AutoReconnect("connection reset")
        return find(query, *args, **kwargs)

    store._items.bulk_write, store._items.find = others_first, read_back_lost
    with pytest.raises(AutoReconnect):
        store.claim("r", "w", 4, 60)
    store._items.bulk_write, store._items.find = bulk_write, find
    assert sorted(i.status for i in store.items("r")) == ["pending", "pending", "pending", "running"]  # not stranded


def until_correct_run(store: Store, questions: int = 2, samples: int = 4, enough: int = 1) -> None:
    store.ensure_run("u", {"until_correct": enough, "samples": samples})
    store.seed("u", [Item(question_id=f"q{q}", question=f"question {q}", reference="1", sample=s,
                          status="waiting" if s else "pending", metadata={"until_correct": enough})
                     for q in range(questions) for s in range(samples)])


def statuses_by_sample(store: Store, run: str = "u") -> dict[str, str]:
    return {f"{item.question_id}/{item.sample}": item.status for item in store.items(run)}


def test_until_correct_asks_samples_one_after_another_and_cancels_the_rest(store: Store) -> None:
    until_correct_run(store)
    first = store.claim("u", "w", 10, 60)
    assert sorted(f"{i.question_id}/{i.sample}" for i in first.items) == ["q0/0", "q1/0"]  # the rest wait
    store.complete(first, {i.id: Result(response="x", correct=i.question_id == "q0") for i in first.items})
    assert statuses_by_sample(store) == {"q0/0": "done", "q0/1": "cancelled", "q0/2": "cancelled", "q0/3": "cancelled",
                                         "q1/0": "done", "q1/1": "pending", "q1/2": "waiting", "q1/3": "waiting"}
    second = store.claim("u", "w", 10, 60)
    store.fail(second, second.ids, "oom", max_attempts=1)  # a failed sample lets the next one go too
    assert statuses_by_sample(store)["q1/2"] == "pending"
    summary = summarize(store.counts("u"))
    assert (summary["waiting"], summary["cancelled"], summary["failed"]) == (1, 3, 1)


def test_until_correct_counts_n_correct_answers(store: Store) -> None:
    until_correct_run(store, questions=1, samples=5, enough=2)
    for correct in (True, False, True):
        claim = store.claim("u", "w", 10, 60)
        assert len(claim.items) == 1
        store.complete(claim, {claim.ids[0]: Result(response="x", correct=correct)})
    assert list(statuses_by_sample(store).values()) == ["done", "done", "done", "cancelled", "cancelled"]


def test_a_question_left_waiting_is_settled_by_advance(store: Store) -> None:
    until_correct_run(store, questions=1, samples=3)
    claim = store.claim("u", "w", 10, 60)
    claim.items[0].metadata = None  # as if the write's second half had failed: nothing settled
    store.complete(claim, {claim.ids[0]: Result(response="x", correct=False)})
    assert statuses_by_sample(store) == {"q0/0": "done", "q0/1": "waiting", "q0/2": "waiting"}
    store.advance("u")
    assert statuses_by_sample(store)["q0/1"] == "pending"
