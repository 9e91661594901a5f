"""Long texts out of the store (`--texts`): compressed in the store without it; with it, in shards
on a local folder or fsspec's in-memory filesystem, each answer done in the store only once its
shard is written, and export, refine and the judge reading them back through the pointers, on
both store backends. Faults: a shard that cannot be written, a worker killed between its shard
and its store write, a lease taken over while it writes. The command lines, as users run them."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import uuid
from pathlib import Path

import pytest
from bson import ObjectId

from bench.standins import mongomock_store
from flows.export import export
from flows.judge import judge
from flows.refine import refine
from tasks.config import ExportConfig, JudgeConfig, RefineConfig, WorkerConfig
from tasks.errors import UserError
from tasks.export import result_rows
from tasks.store import Store
from tasks.store.models import Checkpoint, Item, Result
from tasks.store.mongo import MongoStore
from tasks.store.sqlite import SqliteStore
from tasks.store.steps import read_items
from tasks.texts import TextsLocation, drop_orphans, orphans
from tasks.worker import writes
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import work_on_run
from tasks.worker.shards import ShardWriter, shard_writer
from tasks.worker.shutdown import Shutdown
from tests.conftest import run_flow_cli
from tests.support import FakeClock, ScriptedEngine, SerializedStore, wait_until

TRACE_WORDS = 400  # a trace of some 2.4 KB: long enough to be packed, and to tell apart


class Thinker(ScriptedEngine):
    """Answers every question with a reasoning trace naming it, then `#### 7` (the reference)."""

    def __init__(self, tag: str = "", **kwargs):
        super().__init__({}, **kwargs)
        self.tag = tag

    def reply(self, text: str) -> str:
        trace = "let me add the numbers. " * (TRACE_WORDS // 5)
        return f"<think>{self.tag}{text}: {trace}</think>So it is 7.\n#### 7"


def seeded(store: Store, count: int = 12, run: str = "r") -> Store:
    store.ensure_run(run, {"samples": 1})
    store.seed(run, [Item(question_id=f"q{n:02d}", question=f"question {n:02d}", reference="7")
                     for n in range(count)])
    return store


def work(store: Store, location: TextsLocation, *, engine: ScriptedEngine | None = None, worker: str = "w1",
         shard_seconds: float = 3600.0, **settings) -> ShardWriter:
    """One device of a worker with --texts drains the run (its shard writer's timer never fires)."""
    store.set_texts_url("r", location.url)  # as the worker's flow records it
    config = WorkerConfig(store="sqlite:///unused.db", run="r", **{"batch_size": 4, "lease_seconds": 60,
                                                                   "worker": worker, **settings})
    with LeaseKeeper(store, config.lease_seconds) as keeper, ShardWriter(
            location=location, store=store, keeper=keeper, worker=worker, shard_seconds=shard_seconds,
            max_attempts=config.max_attempts) as writer:
        work_on_run(store=store, engine=engine or Thinker(), config=config, keeper=keeper, shards=writer)
    return writer


@pytest.fixture(params=["folder", "memory"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> TextsLocation:
    return TextsLocation(str(tmp_path / "texts") if request.param == "folder" else f"memory://{uuid.uuid4().hex}")


@pytest.fixture(params=["sqlite", "mongomock"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> tuple[Store, str]:
    """A store shared by the worker's threads, and the URL the flows open it by."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "w.db"), f"sqlite:///{tmp_path / 'w.db'}"
    store = SerializedStore(mongomock_store())
    monkeypatch.setattr(MongoStore, "connect", classmethod(lambda cls, url, **options: store))
    return store, "mongodb://texts.example/fleet"


def test_long_texts_are_kept_compressed_in_the_store(store: Store) -> None:
    seeded(store, 2)
    claim = store.claim("r", "w", 2, 60)
    long = Result(response="So it is 7. " * 100 + "#### 7", reasoning="let me think. " * 500, correct=True)
    store.checkpoint(claim, {claim.items[1].id: Checkpoint("let me think. " * 300, 900)})
    by_id = {item.id: item for item in store.items("r")}
    assert by_id[claim.items[1].id].partial["text"] == "let me think. " * 300
    store.complete(claim, {claim.items[0].id: long})
    raw = raw_result(store, claim.items[0].id)
    assert set(raw["response"]) == {"zlib"} and set(raw["reasoning"]) == {"zlib"}  # what the store holds
    assert len(json.dumps(raw, default=len)) < len(long.reasoning) / 5
    back = {item.id: item for item in store.items("r")}[claim.items[0].id].result
    assert (back.response, back.reasoning) == (long.response, long.reasoning)
    assert all(item.result is None or item.result.reasoning is None for item in store.items("r", texts=False))
    store.complete(claim, {claim.items[1].id: Result(response="#### 7", correct=True)})
    assert raw_result(store, claim.items[1].id)["response"] == "#### 7"  # a short text stays as it is


def raw_result(store: Store, id_: str) -> dict:
    """An item's result as the store holds it, not as it reads it back."""
    if isinstance(store, SqliteStore):
        (text,) = store._db.execute("SELECT result FROM items WHERE id = ?", (int(id_),)).fetchone()
        return json.loads(text)
    return store._items.find_one({"_id": ObjectId(id_)})["result"]


def test_answers_are_done_only_with_their_shard_and_readers_follow_the_pointers(
        prefect_env, backend, location: TextsLocation, monkeypatch, tmp_path: Path) -> None:
    store, url = backend
    seeded(store)
    writer = work(store, location)
    items = store.items("r")
    assert {item.status for item in items} == {"done"}
    assert all(item.result.texts and item.result.response == "" and item.result.reasoning is None for item in items)
    shards = location.shards("r")
    assert writer.shards_written == len(shards) == 1 and all(path.startswith("r/w1/") for path in shards)
    assert sum(len(location.read(path)) for path in shards) == 12

    read = read_items.fn(store, "r")
    assert all(f"{item.question}: let me add" in item.result.reasoning for item in read)
    assert all(item.result.response == "So it is 7.\n#### 7" and item.result.correct for item in read)

    out = tmp_path / "sft.jsonl"
    exported = export(ExportConfig(store=url, run="r", out=str(out), format="sft", allow_test_split=True))
    assert exported["rows"] == 12
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("let me add the numbers" in row["messages"][-1]["content"] for row in rows)

    # a wrong answer retried: its retry carries the answer read from the shard
    first = store.items("r")[0]
    wrong = {**first.result.to_dict(), "correct": False}
    if isinstance(store, SqliteStore):
        store._db.execute("UPDATE items SET result = ? WHERE id = ?", (json.dumps(wrong), int(first.id)))
    else:
        store._store._items.update_one({"_id": ObjectId(first.id)}, {"$set": {"result.correct": False}})
    assert refine(RefineConfig(store=url, run="r", max_rounds=1))["queued"] == 1
    retry = next(item for item in store.items("r") if item.stage == 1)
    assert retry.previous == "So it is 7.\n#### 7"

    # the judge reads the end of the response from the shard
    unread = {**first.result.to_dict(), "predicted": None}
    if isinstance(store, SqliteStore):
        store._db.execute("UPDATE items SET result = ? WHERE id = ?", (json.dumps(unread), int(first.id)))
    else:
        store._store._items.update_one({"_id": ObjectId(first.id)}, {"$unset": {"result.predicted": ""}})
    seen: list[str] = []

    class Judge(ScriptedEngine):
        def reply(self, text: str) -> str:
            seen.append(text)
            return "yes"

    monkeypatch.setattr("flows.judge.judge_engine", lambda config: Judge({}))
    assert judge(JudgeConfig(store=url, run="r"))["judged"] == 1
    assert "So it is 7." in seen[0]


def test_a_shard_that_cannot_be_written_leaves_its_items_undone_kept_then_given_back(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    monkeypatch.setattr(writes, "STORE_RETRY_DELAYS", [0, 0])
    location = TextsLocation(f"memory://{uuid.uuid4().hex}")
    write, tries, statuses = location.write, [], []
    store = seeded(SqliteStore(tmp_path / "w.db"), 8)

    def flaky(path: str, rows: list) -> int:  # the first shard's three tries are refused (a hub's 429), then it is back
        tries.append(path)
        statuses.append({item.status for item in store.items("r")})
        if len(tries) <= 3:
            raise OSError("429 Too Many Requests: you have exceeded the rate limit for repository commits")
        return write(path, rows)

    monkeypatch.setattr(location, "write", flaky)
    writer = work(store, location, engine=Thinker(batch_size=8), lease_seconds=10)
    items = read_items.fn(store, "r")
    assert statuses == [{"running"}] * 4  # none done before its shard was written
    assert len(tries) == 4 and writer.shards_written == 1 and {item.status for item in items} == {"done"}
    assert {item.attempts for item in items} == {0}  # kept for the next shard: answered once, no attempt spent
    assert all(item.result.reasoning and item.error is None for item in items)

    monkeypatch.setattr(location, "write", lambda path, rows: (_ for _ in ()).throw(OSError("no space left")))
    down = seeded(SqliteStore(tmp_path / "down.db"), 4)
    work(down, location, engine=Thinker(batch_size=4), lease_seconds=10)  # it stays down: the worker ends, none done
    assert {(item.status, item.attempts) for item in down.items("r")} == {("failed", 3)}
    assert all("texts not written" in item.error and "no space left" in item.error for item in down.items("r"))


def test_a_stopping_worker_whose_last_shard_fails_gives_its_items_back_untouched(tmp_path: Path,
                                                                                monkeypatch) -> None:
    monkeypatch.setattr(writes, "STORE_RETRY_DELAYS", [0])
    store = seeded(SqliteStore(tmp_path / "w.db"), 4)
    location = TextsLocation(f"memory://{uuid.uuid4().hex}")
    monkeypatch.setattr(location, "write", lambda path, rows: (_ for _ in ()).throw(OSError("bucket gone")))
    keeper = LeaseKeeper(store, 60)
    claim = store.claim("r", "w", 4, 60)
    keeper.hold(claim)
    with ShardWriter(location=location, store=store, keeper=keeper, worker="w", shard_seconds=3600,
                     max_attempts=3) as writer:
        writer.stage([(claim, answered(claim, "late"))])
    assert {(item.status, item.attempts) for item in store.items("r")} == {("pending", 0)}  # at once, for others


class Killed(BaseException):
    """The process dies here (SIGKILL, an OOM kill): nothing after it runs."""


class DiesBeforeTheStoreWrite:
    def __init__(self, store: Store):
        self._store = store

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def complete_many(self, parts):
        raise Killed()


def answered(claim, tag: str) -> dict[str, Result]:
    return {item.id: Result(response=f"{tag} #### 7", reasoning=f"{tag} trace of {item.question}", correct=True,
                            predicted="7") for item in claim.items}


def test_a_worker_killed_between_its_shard_and_its_store_write_leaves_an_orphan_and_the_item_is_redone_once(
        tmp_path: Path) -> None:
    clock = FakeClock()
    store = seeded(SqliteStore(tmp_path / "w.db", clock=clock), 4)
    location = TextsLocation(str(tmp_path / "texts"))
    keeper = LeaseKeeper(store, 60)  # never entered: a killed worker neither beats nor gives anything back
    claim = store.claim("r", "dead", 4, 60)
    keeper.hold(claim)
    dying = ShardWriter(location=location, store=DiesBeforeTheStoreWrite(store), keeper=keeper, worker="dead",
                        shard_seconds=3600, max_attempts=3)
    dying.stage([(claim, answered(claim, "first"))])
    with pytest.raises(Killed):
        dying.flush()
    assert len(location.shards("r")) == 1 and {item.status for item in store.items("r")} == {"running"}
    clock.advance(61)  # its lease runs out; another worker takes the items over
    work(store, location, worker="w2")
    items = read_items.fn(store, "r")
    assert {item.status for item in items} == {"done"} and len(items) == 4
    assert all(f"{item.question}: let me add" in item.result.reasoning for item in items)  # redone, not "first"
    assert sorted(row["question_id"] for row in result_rows(items)) == ["q00", "q01", "q02", "q03"]  # each once

    kept = {(item.id, item.token): item.result.texts["shard"] for item in store.items("r", texts=False)}
    stray = orphans(location, "r", kept, older_than=0)
    assert list(stray.values()) == [(4, 4)]  # the dead worker's shard: orphans only
    assert drop_orphans(location, stray, kept) == (4, 1)
    assert len(location.shards("r")) == 1 and orphans(location, "r", kept, older_than=0) == {}
    assert all(item.result.reasoning for item in read_items.fn(store, "r"))


def test_a_lease_taken_over_while_the_shard_is_written_leaves_an_orphan_never_exported(tmp_path: Path,
                                                                                        caplog) -> None:
    clock = FakeClock()
    store = seeded(SqliteStore(tmp_path / "w.db", clock=clock), 4)
    location = TextsLocation(f"memory://{uuid.uuid4().hex}")
    slow = LeaseKeeper(store, 60)
    claim = store.claim("r", "slow", 4, 60)
    slow.hold(claim)
    late = ShardWriter(location=location, store=store, keeper=slow, worker="slow", shard_seconds=3600, max_attempts=3)
    late.stage([(claim, answered(claim, "stale"))])
    clock.advance(61)  # the slow worker's lease expired before its shard was written
    work(store, location, worker="fast")
    assert late.flush() == 0  # its shard is written, the store refuses the answers
    assert "their rows are orphans, never read" in caplog.text
    assert len(location.shards("r")) == 2
    items = read_items.fn(store, "r")
    assert all(item.result.worker is None or item.result.worker == "fast" for item in items)
    assert not any("stale" in item.result.response for item in items)
    kept = {(item.id, item.token): item.result.texts["shard"] for item in store.items("r", texts=False)}
    assert sum(rows for rows, _ in orphans(location, "r", kept, older_than=0).values()) == 4


def test_a_stop_writes_the_shard_of_what_finished_before_the_claims_go_back(tmp_path: Path) -> None:
    store = seeded(SqliteStore(tmp_path / "w.db"), 40)
    location = TextsLocation(str(tmp_path / "texts"))
    shutdown = Shutdown(grace_seconds=30)
    config = WorkerConfig(store="sqlite:///unused.db", run="r", batch_size=4, lease_seconds=60, worker="w")

    class StopsAfterTwo(Thinker):
        def run(self, feeder, sampling):
            for n, group in enumerate(super().run(feeder, sampling), 1):
                if n == 2:
                    shutdown.request("SIGTERM")
                yield group

    with LeaseKeeper(store, 60) as keeper, shutdown.on_signals(keeper.give_back_all), ShardWriter(
            location=location, store=store, keeper=keeper, worker="w", shard_seconds=3600, max_attempts=3) as writer:
        work_on_run(store=store, engine=StopsAfterTwo(), config=config, keeper=keeper, shutdown=shutdown,
                    shards=writer)
    counts = {status: sum(item.status == status for item in store.items("r")) for status in ("done", "pending")}
    assert counts == {"done": 8, "pending": 32}  # the shard came before the claims went back; nothing left running
    assert sum(len(location.read(path)) for path in location.shards("r")) == 8


def test_every_worker_of_a_run_writes_its_texts_to_one_place(tmp_path: Path) -> None:
    store = seeded(SqliteStore(tmp_path / "w.db"), 1)
    config = WorkerConfig(store="sqlite:///unused.db", run="r", texts=str(tmp_path / "a"))
    with shard_writer(store=store, keeper=LeaseKeeper(store, 60), config=config, runs=["r"]):
        pass
    assert store.texts_url("r") == str(tmp_path / "a") and config.shard_window == 60
    with pytest.raises(UserError, match="keeps its texts at .*/a .* give every worker of a run the same --texts"):
        shard_writer(store=store, keeper=LeaseKeeper(store, 60), config=config.model_copy(
            update={"texts": str(tmp_path / "b")}), runs=["r"])
    assert WorkerConfig(texts="hf://datasets/me/traces").shard_window == 1800
    with pytest.raises(UserError, match="is not a storage URL fsspec knows"):
        TextsLocation("nosuch://bucket/prefix")
    with pytest.raises(UserError, match="no credentials in the URL"):
        TextsLocation("s3://AKIAEXAMPLE:s3cr3t@bucket/prefix")
    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(UserError, match="needs a package that is not installed.*pip install s3fs"):
            TextsLocation("s3://bucket/prefix")


def test_the_command_lines_with_texts_in_a_folder(tmp_path: Path, tiny_model: Path) -> None:
    """A worker with --texts, then export, status and the orphans' command, as a user runs them."""
    url, texts = f"sqlite:///{tmp_path / 'w.db'}", tmp_path / "texts"
    seeded(SqliteStore(tmp_path / "w.db"), 6)
    worker = run_flow_cli("generate.py", "--store", url, "--run", "r", "--model", str(tiny_model), "--max-new-tokens",
                          "24", "--batch-size", "3", "--texts", str(texts), cwd=tmp_path, timeout=300)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert f"a shard every 60 s to {texts}" in worker.stdout + worker.stderr
    store = SqliteStore(tmp_path / "w.db")
    items = store.items("r")
    assert {item.status for item in items} == {"done"} and all(item.result.texts for item in items)
    shards = sorted(texts.rglob("*.jsonl.gz"))
    assert shards and all(shard.parent.parent.name == "r" for shard in shards)
    with sqlite3.connect(tmp_path / "w.db") as raw:  # none of the answers' texts is in the store
        stored = " ".join(row[0] for row in raw.execute("SELECT result FROM items"))
    responses = [item.result.response for item in read_items.fn(store, "r")]
    assert all(response and response not in stored for response in responses if len(response) > 12)

    out = tmp_path / "rows.jsonl"
    exported = run_flow_cli("export.py", "--store", url, "--run", "r", "--out", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == responses

    status = run_flow_cli("status.py", "--store", url, "--run", "r", cwd=tmp_path)
    assert status.returncode == 0 and "texts of r: " in status.stdout and f"shards at {texts}" in status.stdout
    listed = run_flow_cli("texts.py", "--store", url, "--run", "r", "--json", cwd=tmp_path)
    report = json.loads(listed.stdout.splitlines()[-1])
    assert report["answers"] == 6 and report["orphan_rows"] == 0 and report["shards"] == len(shards)

    moved = tmp_path / "moved"
    texts.rename(moved)  # readers told where the shards are now; without it, a clear error
    lost = run_flow_cli("export.py", "--store", url, "--run", "r", "--out", str(out), cwd=tmp_path)
    assert lost.returncode == 2 and "are missing" in lost.stderr and "Traceback" not in lost.stderr
    again = run_flow_cli("export.py", "--store", url, "--run", "r", "--out", str(out), "--texts", str(moved),
                         cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_sigterm_to_a_worker_writing_shards_leaves_every_done_answer_readable(tmp_path: Path, tiny_model: Path) -> None:
    """The real command line: shards every 2 s, then SIGTERM: it exits 0, nothing is left running,
    and every answer the store calls done is in a shard, none of them twice."""
    from tests.test_generate_flow import start_worker

    url, texts = f"sqlite:///{tmp_path / 'fleetgen.db'}", tmp_path / "texts"
    store = seeded(SqliteStore(tmp_path / "fleetgen.db"), 60)
    worker = start_worker(tmp_path, tiny_model, "preempted", "--store", url, "--batch-size", "4", "--max-new-tokens",
                          "48", "--texts", str(texts), "--shard-seconds", "2")
    assert wait_until(lambda: any(item.status == "done" for item in store.items("r")) or worker.poll() is not None,
                      timeout=240)
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0 and "stopped (SIGTERM)" in output and "Traceback" not in output, output
    items = read_items.fn(store, "r")
    done = [item for item in items if item.status == "done"]
    assert done and {item.status for item in items} <= {"done", "pending"}
    assert all(item.result.texts and item.result.response for item in done)
    rows = [row["id"] for path in TextsLocation(str(texts)).shards("r") for row in TextsLocation(str(texts)).read(path)]
    assert sorted(rows) == sorted(item.id for item in done)  # each once, and no orphan: nothing was taken over


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("FLEETGEN_TEST_HF_REPO")),
                    reason="the hub path needs HF_TOKEN and FLEETGEN_TEST_HF_REPO (a dataset repo it may write to); "
                           "no hub can be reached from the test machines, and huggingface_hub has no local double")
def test_shards_on_the_hub(tmp_path: Path) -> None:
    location = TextsLocation(f"hf://datasets/{os.environ['FLEETGEN_TEST_HF_REPO']}/fleetgen-test-{uuid.uuid4().hex}")
    location.check()
    path = location.new_shard("r", "w")
    location.write(path, [{"id": "1", "token": "t", "response": "#### 7", "reasoning": "hm"}])
    try:
        assert location.read(path)[0]["response"] == "#### 7" and path in location.shards("r")
    finally:
        location.remove(path)

