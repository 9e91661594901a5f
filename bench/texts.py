"""Texts out of the store (`--texts`): `python bench/texts.py [--items N]`.

1. Bytes per answered item in the store, three ways side by side: texts as they were stored
   before (plain), compressed in the store (the default without --texts), and in shards with a
   pointer in the store (--texts); for a GSM8K answer and for a 16k-token reasoning trace. MongoDB:
   the BSON size of the item's document as the store writes it (what `dataSize`, and so Atlas'
   quota, counts; indexes not included: no server here), and how many such items fit in 512 MB.
   SQLite: the file's growth per item. Shards: their gzip bytes per answer.
2. The read cost of an export of N answered items (default 10,000 GSM8K answers): reading the run
   with texts compressed in the store, and through pointers to shards of 1,000 answers in a local
   folder, side by side (seconds, shards read, bytes read).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import bson

from bench.standins import mongomock_store
from tasks.config import ModelConfig, SamplingConfig
from tasks.store import Store
from tasks.store.models import Item, Result
from tasks.store.packing import RESULT_TEXTS, unpack
from tasks.store.sqlite import SqliteStore
from tasks.store.steps import read_items
from tasks.texts import TextsLocation
from tasks.worker.leases import LeaseKeeper
from tasks.worker.shards import ShardWriter

GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
TRACE_CHARS = 64_000  # about 16,000 tokens at 4 characters a token
QUOTA = 512 * 2**20
SHARD_ROWS = 1000


def solutions() -> list[str]:
    return [json.loads(line)["answer"] for line in GSM8K_TRAIN.read_text().splitlines()]


def answers(kind: str, count: int, texts: list[str]) -> list[tuple[str, str | None]]:
    """(response, trace) pairs: a real GSM8K solution each, and for `trace` a 16k-token trace
    before it made of the following solutions (real English and arithmetic, as a trace reads)."""
    made = []
    for n in range(count):
        response = texts[n % len(texts)]
        trace = None
        if kind == "trace":
            parts: list[str] = []
            k = n + 1
            while sum(len(part) for part in parts) < TRACE_CHARS:
                parts.append(texts[k % len(texts)])
                k += 1
            trace = "\n\n".join(parts)[:TRACE_CHARS]
        made.append((response, trace))
    return made


def result(response: str, trace: str | None) -> Result:
    """A result with every field a worker writes."""
    return Result(response=response, reasoning=trace, predicted="72", correct=True, tokens=4200 if trace else 180,
                  reasoning_tokens=16000 if trace else None, reasoning_complete=True if trace else None,
                  seconds=3.2, finish_reason="stop", worker="kaggle-3f2a-1234", device="cuda:0", finished=1.8e9,
                  engine="vllm", model=ModelConfig(model="Qwen/Qwen3-1.7B").model_dump(), prompt="step_by_step",
                  prompt_hash="0123456789abcdef", sampling=SamplingConfig().model_dump(), seed=123456789)


def bson_bytes(store: Any, run: str) -> float:
    """Average BSON size of the run's documents as stored."""
    docs = list(store._items.find({"run": run}))
    return sum(len(bson.encode(doc)) for doc in docs) / len(docs)


def answer_run(store: Store, run: str, made: list[tuple[str, str | None]], location: TextsLocation | None) -> None:
    """Seed `made` as a run and complete it: in the store, or through a shard writer (a shard per SHARD_ROWS)."""
    store.ensure_run(run, {})
    store.seed(run, [Item(question_id=f"q{n:05d}", question=f"Question {n}: how many clips did Natalia sell?",
                          reference="72") for n in range(len(made))])
    keeper = LeaseKeeper(store, 600)
    writer = ShardWriter(location=location, store=store, keeper=keeper, worker="bench", shard_seconds=3600,
                         max_attempts=3) if location else None
    if location:
        store.set_texts_url(run, location.url)
    while (claim := store.claim(run, "bench", SHARD_ROWS, 600)).items:
        results = {item.id: result(*made[int(item.question_id[1:])]) for item in claim.items}
        if writer:
            keeper.hold(claim)
            writer.stage([(claim, results)])
            writer.flush()
        else:
            store.complete(claim, results)


def plain_bytes(store: Any, run: str) -> float:
    """Average BSON size of the run's documents with their texts unpacked (as stored before)."""
    sizes = []
    for doc in store._items.find({"run": run}):
        doc["result"] = unpack(doc["result"], RESULT_TEXTS)
        sizes.append(len(bson.encode(doc)))
    return sum(sizes) / len(sizes)


def sizes(kind: str, count: int, texts: list[str], folder: Path) -> dict[str, Any]:
    made = answers(kind, count, texts)
    mongo = mongomock_store()
    answer_run(mongo, "in-store", made, None)
    location = TextsLocation(str(folder / kind))
    answer_run(mongo, "shards", made, location)
    plain, packed, pointer = plain_bytes(mongo, "in-store"), bson_bytes(mongo, "in-store"), bson_bytes(mongo, "shards")
    shard_bytes = sum(location.shards("shards").values()) / count
    sqlite = {way: sqlite_bytes(folder / f"{kind}-{way}.db", made, TextsLocation(str(folder / f"{kind}-sqlite"))
                                if way == "pointer" else None) for way in ("packed", "pointer")}
    chars = sum(len(r) + len(t or "") for r, t in made) / count
    return {"kind": kind, "chars": chars, "mongo": {"plain": plain, "packed": packed, "pointer": pointer},
            "sqlite": sqlite, "shard_bytes": shard_bytes}


def sqlite_bytes(path: Path, made: list[tuple[str, str | None]], location: TextsLocation | None) -> float:
    """The SQLite file's growth per answered item (compacted), over an empty store's."""
    store = SqliteStore(path)
    store._db.execute("VACUUM")
    empty = path.stat().st_size
    answer_run(store, "r", made, location)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store._db.execute("VACUUM")
    store.close()
    return (path.stat().st_size - empty) / len(made)


def read_cost(count: int, texts: list[str], folder: Path) -> dict[str, Any]:
    made = answers("gsm8k", count, texts)
    store = SqliteStore(folder / "read.db")
    answer_run(store, "in-store", made, None)
    location = TextsLocation(str(folder / "read-shards"))
    answer_run(store, "shards", made, location)
    reads = {"n": 0, "bytes": 0}
    read = TextsLocation.read

    def counted(self: TextsLocation, path: str) -> list[dict[str, Any]]:
        reads["n"] += 1
        reads["bytes"] += self.fs.size(self._full(path))
        return read(self, path)

    TextsLocation.read = counted  # type: ignore[method-assign]  # the readers make their own location
    seconds: dict[str, float] = {}
    for run in ("in-store", "shards", "in-store", "shards"):  # twice each, alternating; the faster of each kept
        started = time.perf_counter()
        items = read_items.fn(store, run, texts_url=location.url if run == "shards" else None)
        took = time.perf_counter() - started
        seconds[run] = min(seconds.get(run, took), took)
        assert len(items) == count and all(item.result and item.result.response for item in items)
    return {"items": count, "seconds": seconds, "shard_reads": reads["n"] // 2, "bytes_read": reads["bytes"] // 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="answered items the export reads")
    parser.add_argument("--sized", type=int, default=200, help="items each way for the sizes")
    args = parser.parse_args()
    texts = solutions()
    with tempfile.TemporaryDirectory() as tmp:
        print("| answer | characters | MongoDB document: plain (before) | compressed in the store | pointer "
              "(--texts) | items in 512 MB: plain | compressed | pointer | SQLite per item: compressed | pointer | "
              "shard bytes per answer |")
        print("| --- " * 12 + "|")
        for kind in ("gsm8k", "trace"):
            found = sizes(kind, args.sized, texts, Path(tmp))
            mongo, sqlite = found["mongo"], found["sqlite"]
            name = "GSM8K solution" if kind == "gsm8k" else "16k-token trace + solution"
            print(f"| {name} | {found['chars']:,.0f} | "
                  + " | ".join(f"{mongo[way]:,.0f} B" for way in ("plain", "packed", "pointer")) + " | "
                  + " | ".join(f"{QUOTA / mongo[way]:,.0f}" for way in ("plain", "packed", "pointer")) + " | "
                  + " | ".join(f"{sqlite[way]:,.0f} B" for way in ("packed", "pointer"))
                  + f" | {found['shard_bytes']:,.0f} B |")
        cost = read_cost(args.items, texts, Path(tmp))
        seconds = cost["seconds"]
        print(f"\nexport read of {cost['items']:,} answered items: texts in the store {seconds['in-store']:.2f} s, "
              f"through pointers {seconds['shards']:.2f} s ({seconds['shards'] / seconds['in-store']:.2f}x), "
              f"{cost['shard_reads']} shard reads, {cost['bytes_read'] / 2**20:.2f} MB read from the shards")


if __name__ == "__main__":
    main()
