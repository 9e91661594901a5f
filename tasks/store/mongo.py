"""MongoDB work store (Atlas free tier friendly): few round trips, compact documents.

A claim costs two round trips whatever the batch size (find the candidates, update those still
claimable under a fresh token), more when other workers took some first or leases are taken
over (a read-back of what the token got, then a round for the rest) and near a run's end (the
candidates wrap around).
Candidates start at a random point of the run, so a fleet's claims seldom collide; leases are
timed with the server's clock. Complete is one bulk write, for several claims at once.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from datetime import timezone
from typing import Any, Iterable

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateMany, UpdateOne
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI, OperationFailure, PyMongoError
from pymongo.server_api import ServerApi

from tasks.errors import UserError
from tasks.secrets import redact
from tasks.store.models import LEASE_EXPIRED, TO_ANSWER, Checkpoint, Claim, Clock, Item, Result, settling
from tasks.store.packing import CHECKPOINT_TEXTS, RESULT_TEXTS, pack, unpack

DEFAULT_DATABASE = "fleetgen"
SERVER_SELECTION_TIMEOUT_MS = 8000
CLAIM_ROUNDS = 3  # rounds when other workers took candidates first
# a worker holds at most 3 connections on the primary (one monitor, two pooled: its device, heartbeat and
# progress threads share them) and one monitor on each secondary: a fleet of 50 stays far below M0's 500
CLIENT_OPTIONS = {"maxPoolSize": 2, "serverMonitoringMode": "poll"}
RELEASE = {"$set": {"status": "pending"}, "$unset": {"lease_expires": "", "worker": "", "token": ""}}


def _first_clause(message: str) -> str:
    """The gist of a pymongo error, without its topology dump."""
    return redact(re.split(r" \(configured timeouts|, Timeout:", message)[0])[:300]


def _item(doc: dict[str, Any]) -> Item:
    result = Result.from_dict(unpack(doc["result"], RESULT_TEXTS)) if doc.get("result") else None
    return Item(
        question_id=doc["question_id"], question=doc.get("question", ""), reference=doc["reference"],
        stage=doc["stage"], sample=doc["sample"], status=doc["status"], result=result,
        attempts=doc.get("attempts", 0), worker=doc.get("worker"), token=doc.get("token"),
        lease_expires=doc.get("lease_expires"), error=doc.get("error"), previous=doc.get("previous"),
        metadata=doc.get("metadata"), partial=unpack(doc["partial"], CHECKPOINT_TEXTS) if doc.get("partial") else None,
        id=str(doc["_id"]),
    )


def _packed(result: Result) -> dict[str, Any]:
    return pack(result.to_dict(), RESULT_TEXTS, binary=True)


def server_clock_offset(db: Database, clock: Clock) -> float:
    """Seconds to add to `clock` to read the server's clock (from `hello`'s localTime, halfway
    through the round trip; 0 where the server does not say), so a notebook whose clock runs
    ahead does not take over live leases."""
    sent = clock()
    try:
        server_time = db.command("hello").get("localTime")
    except (PyMongoError, NotImplementedError):  # mongomock has no `hello`
        return 0.0
    received = clock()
    return server_time.replace(tzinfo=timezone.utc).timestamp() - (sent + received) / 2 if server_time else 0.0


def claimable(run: str, now: float, start: float) -> dict[str, Any]:
    """Items whose lease expired, and pending items from the random key `start` on."""
    return {"run": run, "$or": [{"status": "running", "lease_expires": {"$lt": now}},
                                {"status": "pending", "r": {"$gte": start}}]}


NONE_WAITING = 1 << 30  # a sample number no question reaches: `$min` of a question with none waiting


class MongoStore:
    def __init__(self, db: Database, url: str = "mongodb://", clock: Clock = time.time):
        self.url, self.clock = redact(url), clock
        self._db = db
        self.clock_offset = server_clock_offset(db, clock)
        self._items = db["items"]
        self._runs = db["runs"]
        self._items.create_index(
            [("run", ASCENDING), ("question_id", ASCENDING), ("stage", ASCENDING), ("sample", ASCENDING)],
            unique=True, name="item_key",
        )
        self._items.create_index(
            [("run", ASCENDING), ("status", ASCENDING), ("lease_expires", ASCENDING)], name="claim"
        )
        self._items.create_index([("run", ASCENDING), ("status", ASCENDING), ("r", ASCENDING)], name="claim_spread")

    @classmethod
    def connect(cls, url: str, clock: Clock = time.time, **client_options: Any) -> "MongoStore":
        """Connect with a short server-selection timeout; unreachable servers fail in seconds."""
        where = redact(url)
        try:
            client: MongoClient = MongoClient(
                url, server_api=ServerApi("1"), retryWrites=True, appname="fleetgen",
                serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
                connectTimeoutMS=SERVER_SELECTION_TIMEOUT_MS, **{**CLIENT_OPTIONS, **client_options},
            )
            client.admin.command("ping")
            return cls(client.get_default_database(default=DEFAULT_DATABASE), url, clock)
        except (InvalidURI, ConfigurationError, ValueError) as error:  # a bad port is a plain ValueError
            raise UserError(f"The MongoDB URL {where} is not valid: {redact(str(error))}.") from error
        except OperationFailure as error:
            raise UserError(
                f"MongoDB at {where} refused the request: {redact(str(error))}. "
                "Check the user name, password and the user's database permissions."
            ) from error
        except PyMongoError as error:
            raise UserError(
                f"Cannot reach MongoDB at {where} within {SERVER_SELECTION_TIMEOUT_MS // 1000} s "
                f"({_first_clause(str(error))}). Check the host name, that the server runs, and "
                "for Atlas that this machine's IP is in the project's network access list."
            ) from error

    def ensure_run(self, run: str, config: dict[str, Any]) -> None:
        self._runs.update_one(
            {"_id": run}, {"$setOnInsert": {"config": config, "created": self.clock()}}, upsert=True
        )

    def runs(self) -> list[str]:
        return [doc["_id"] for doc in self._runs.find({}, {"_id": 1}).sort("created", ASCENDING)]

    def run_config(self, run: str) -> dict[str, Any]:
        doc = self._runs.find_one({"_id": run}, {"config": 1})
        return dict(doc["config"]) if doc else {}

    def set_contamination(self, run: str, report: dict[str, Any]) -> None:
        self._runs.update_one({"_id": run}, {"$set": {"contamination": report}})

    def contamination(self, run: str) -> dict[str, Any] | None:
        doc = self._runs.find_one({"_id": run}, {"contamination": 1})
        return doc.get("contamination") if doc else None

    def set_texts_url(self, run: str, url: str) -> None:
        self._runs.update_one({"_id": run}, {"$set": {"texts": url}})

    def texts_url(self, run: str) -> str | None:
        doc = self._runs.find_one({"_id": run}, {"texts": 1})
        return doc.get("texts") if doc else None

    def seed(self, run: str, items: Iterable[Item], chunk: int = 1000) -> int:
        ops = []
        for item in items:
            doc = {"run": run, "stage": item.stage, "question_id": item.question_id, "sample": item.sample,
                   "question": item.question, "reference": item.reference, "status": item.status,
                   "attempts": 0, "r": random.random(), "chars": len(item.question) + len(item.previous or "")}
            if item.result is not None:
                doc["result"] = _packed(item.result)
            if item.previous is not None:
                doc["previous"] = item.previous
            if item.metadata:
                doc["metadata"] = item.metadata
            key = {k: doc[k] for k in ("run", "question_id", "stage", "sample")}
            ops.append(UpdateOne(key, {"$setOnInsert": doc}, upsert=True))
        return sum(
            self._items.bulk_write(ops[start:start + chunk], ordered=False).upserted_count
            for start in range(0, len(ops), chunk)
        )

    def now(self) -> float:
        """The server's time as this machine estimates it (leases are compared across machines)."""
        return self.clock() + self.clock_offset

    def _candidates(self, run: str, now: float, limit: int) -> list[dict[str, Any]]:
        """Items from a random point of the run on, in the order of their random key `r` (the
        `claim_spread` index): workers claiming at once seldom want the same items. Expired leases
        are among them wherever they are; wraps around."""
        start, fields = random.random(), {"result": 0}
        docs = list(self._items.find(claimable(run, now, start), fields).sort("r", ASCENDING).limit(limit))
        if len(docs) < limit:  # near the end of the run, or items seeded before the random key
            docs += self._items.find({"run": run, "status": "pending", "$or": [{"r": {"$lt": start}}, {"r": None}]},
                                     fields).sort("r", ASCENDING).limit(limit - len(docs))
        return docs

    def claim(self, run: str, worker: str, limit: int, lease_seconds: float, *, max_attempts: int = 3) -> Claim:
        token, got = uuid.uuid4().hex, list[Item]()
        for round_ in range(CLAIM_ROUNDS):
            if round_:  # others took candidates first: again at once for the rest, a moment apart from them
                time.sleep(random.uniform(0, 0.05))
            now = self.now()
            docs = self._candidates(run, now, limit - len(got))
            if not docs:
                break
            held = {"status": "running", "worker": worker, "token": token, "lease_expires": now + lease_seconds}
            fresh = [doc["_id"] for doc in docs if doc["status"] == "pending"]
            expired = [doc for doc in docs if doc["status"] == "running"]
            ops: list[Any] = [UpdateMany({"_id": {"$in": fresh}, "status": "pending"}, {"$set": held})] if fresh else []
            poisoned = []
            for doc in expired:  # a worker died holding it: an attempt spent; the last one fails it (a poison item)
                still = {"_id": doc["_id"], "status": "running", "lease_expires": {"$lt": now}}
                spent = doc.get("attempts", 0) + 1 >= max_attempts
                if spent:
                    poisoned.append(_item(doc))
                ops.append(UpdateOne(still, {"$inc": {"attempts": 1}, "$set": {
                    "status": "failed", "error": LEASE_EXPIRED % (doc.get("attempts", 0) + 1)} if spent else held}))
            taken = self._items.bulk_write(ops, ordered=False).modified_count
            if poisoned:
                self._advance(run, *settling(poisoned))
            if not expired and taken == len(fresh):  # all of them ours: no read-back needed
                got += [_item({**doc, **held}) for doc in docs]
            elif taken:  # others took some first, or leases were taken over: read back what this token holds
                ours = {"_id": {"$in": [doc["_id"] for doc in docs]}, "token": token, "status": "running"}  # by _id
                try:
                    got += [_item(doc) for doc in self._items.find(ours, {"result": 0})]
                except PyMongoError:
                    mine = [ObjectId(item.id) for item in got] + [doc["_id"] for doc in docs]
                    self._items.update_many({"_id": {"$in": mine}, "token": token, "status": "running"}, RELEASE)
                    raise
            if len(got) == limit or taken == len(docs):  # all it wanted, or all there was: no race lost
                break
        return Claim(token, worker, got, run=run)

    def _held(self, claim: Claim, ids: list[str]) -> dict[str, Any]:
        return {"_id": {"$in": [ObjectId(i) for i in ids]}, "token": claim.token, "status": "running"}

    def heartbeat(self, claim: Claim, lease_seconds: float) -> int:
        update = {"$set": {"lease_expires": self.now() + lease_seconds}}
        return self._items.update_many(self._held(claim, claim.ids), update).modified_count

    def checkpoint(self, claim: Claim, checkpoints: dict[str, Checkpoint]) -> int:
        ops = [UpdateOne({"_id": ObjectId(id_), "token": claim.token, "status": "running"},
                         {"$set": {"partial": pack(kept.to_dict(), CHECKPOINT_TEXTS, binary=True)}})
               for id_, kept in checkpoints.items()]
        return self._items.bulk_write(ops, ordered=False).modified_count if ops else 0

    def complete(self, claim: Claim, results: dict[str, Result]) -> int:
        return self.complete_many([(claim, results)])

    def complete_many(self, parts: list[tuple[Claim, dict[str, Result]]]) -> int:
        ops = [
            UpdateOne({"_id": ObjectId(id_), "token": claim.token, "status": "running"},
                      {"$set": {"status": "done", "result": _packed(result)},
                       "$unset": {"lease_expires": "", "error": "", "partial": ""}})
            for claim, results in parts for id_, result in results.items()
        ]
        if not ops:
            return 0
        written = self._items.bulk_write(ops, ordered=False).modified_count
        for claim, results in parts:
            self._advance(claim.run, *settling([item for item in claim.items if item.id in results]))
        return written

    def fail(self, claim: Claim, ids: list[str], error: str, max_attempts: int) -> int:
        if not ids:
            return 0
        held = self._held(claim, ids)
        last = {**held, "attempts": {"$gte": max_attempts - 1}}
        again = {**held, "attempts": {"$lt": max_attempts - 1}}
        ops = [
            UpdateMany(last, {"$set": {"status": "failed", "error": error}, "$inc": {"attempts": 1},
                              "$unset": {"lease_expires": ""}}),
            UpdateMany(again, {"$set": {"status": "pending", "error": error}, "$inc": {"attempts": 1},
                               "$unset": {"lease_expires": "", "worker": "", "token": ""}}),
        ]
        failed = self._items.bulk_write(ops, ordered=True).modified_count
        self._advance(claim.run, *settling([item for item in claim.items if item.id in ids]))
        return failed

    def advance(self, run: str) -> None:
        self._advance(run, None, self.run_config(run).get("until_correct"))

    def _advance(self, run: str, questions: set[str] | None, enough: int | None) -> None:
        """For items seeded with --until-correct N: a question with N correct answers has its
        waiting samples cancelled; one with no sample pending or running has its next waiting
        sample made pending. One aggregation and one bulk write, for all the questions at once."""
        if not enough or questions == set():
            return
        match: dict[str, Any] = {"run": run, "stage": 0}
        if questions is not None:
            match["question_id"] = {"$in": sorted(questions)}
        else:  # every question that still has waiting samples
            match["question_id"] = {"$in": self._items.distinct("question_id", {**match, "status": "waiting"})}
        correct = {"$and": [{"$eq": ["$status", "done"]}, {"$eq": ["$result.correct", True]}]}
        active = {"$in": ["$status", ["pending", "running"]]}
        waiting = {"$cond": [{"$eq": ["$status", "waiting"]}, "$sample", NONE_WAITING]}
        ops: list[Any] = []
        for doc in self._items.aggregate([{"$match": match}, {"$group": {
                "_id": "$question_id", "correct": {"$sum": {"$cond": [correct, 1, 0]}},
                "active": {"$sum": {"$cond": [active, 1, 0]}}, "next": {"$min": waiting}}}]):
            if doc["next"] == NONE_WAITING:
                continue
            where = {"run": run, "stage": 0, "question_id": doc["_id"], "status": "waiting"}
            if doc["correct"] >= enough:
                ops.append(UpdateMany(where, {"$set": {"status": "cancelled"}}))
            elif not doc["active"]:
                ops.append(UpdateOne({**where, "sample": doc["next"]}, {"$set": {"status": "pending"}}))
        if ops:
            self._items.bulk_write(ops, ordered=False)

    def release(self, claim: Claim) -> int:
        return self._items.update_many(self._held(claim, claim.ids), RELEASE).modified_count

    def add_judgements(self, run: str, judgements: dict[str, dict[str, Any]]) -> int:
        ops = [UpdateOne({"_id": ObjectId(id_), "run": run, "status": "done"}, {"$set": {"result.judge": judgement}})
               for id_, judgement in judgements.items()]
        return self._items.bulk_write(ops, ordered=False).modified_count if ops else 0

    def counts(self, run: str) -> list[dict[str, Any]]:
        now = self.now()
        expired = {"$and": [{"$eq": ["$status", "running"]}, {"$lt": ["$lease_expires", now]}]}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"run": run}},
            {"$group": {"_id": {"stage": "$stage", "status": "$status", "worker": "$worker"},
                        "n": {"$sum": 1}, "expired": {"$sum": {"$cond": [expired, 1, 0]}}}},
        ]
        rows = [{**doc["_id"], "n": doc["n"], "expired": doc["expired"]} for doc in self._items.aggregate(pipeline)]
        for row in rows:
            row.setdefault("worker", None)
        return sorted(rows, key=lambda r: (r["stage"], r["status"], r["worker"] or ""))

    def devices(self, run: str) -> list[dict[str, Any]]:
        pipeline: list[dict[str, Any]] = [
            {"$match": {"run": run, "status": "done", "result.device": {"$exists": True}}},
            {"$group": {"_id": {"worker": "$result.worker", "device": "$result.device"}, "done": {"$sum": 1},
                        "tokens": {"$sum": "$result.tokens"}, "seconds": {"$sum": "$result.seconds"},
                        "last": {"$max": "$result.finished"}}},
        ]
        rows = [{"worker": doc["_id"].get("worker"), "device": doc["_id"]["device"],
                 **{key: doc[key] for key in ("done", "tokens", "seconds", "last")}}
                for doc in self._items.aggregate(pipeline)]
        return sorted(rows, key=lambda r: (r["worker"] or "", r["device"]))

    def storage(self) -> dict[str, float] | None:
        """What the cluster holds as Atlas counts it against a free or Flex cluster's quota
        (`atlasSize`: data + indexes of every database, uncompressed); elsewhere this database's
        data + indexes (`dbStats`)."""
        try:
            sizes = self._db.command({"atlasSize": 1})
            totals = sizes["totals"]
            return {"bytes": sizes["atlasSize"], "documents": totals["objects"],
                    "bytes_per_document": totals.get("avgObjSize") or 0, "counted": "atlasSize"}
        except (OperationFailure, NotImplementedError, KeyError):  # not Atlas' free tier; mongomock has neither
            pass
        try:
            stats = self._db.command("dbStats")
        except (OperationFailure, NotImplementedError):  # no right to dbStats
            return None
        return {"bytes": stats["dataSize"] + stats["indexSize"], "documents": stats["objects"],
                "bytes_per_document": stats.get("avgObjSize") or 0, "counted": "dbStats"}

    def longest_prompts(self, run: str, limit: int) -> list[Item]:
        """By the `chars` each item was seeded with (items seeded before it have none: never longest)."""
        docs = self._items.find({"run": run, "status": {"$in": list(TO_ANSWER)}}, {"result": 0, "partial": 0})
        return [_item(doc) for doc in docs.sort("chars", DESCENDING).limit(limit)]

    def items(self, run: str, *, texts: bool = True) -> list[Item]:
        fields = None if texts else dict.fromkeys(("question", "previous", "partial", "result.response",
                                                    "result.reasoning"), 0)
        docs = self._items.find({"run": run}, fields).sort([("stage", ASCENDING), ("question_id", ASCENDING),
                                                   ("sample", ASCENDING)])
        return [_item(doc) for doc in docs]

    def close(self) -> None:
        self._db.client.close()
