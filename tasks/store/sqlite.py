"""Embedded SQLite work store: WAL, immediate transactions, a busy timeout.

Safe for many processes on one machine (each claim is one `BEGIN IMMEDIATE` transaction) and
for many threads of one process (one connection behind a lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tasks.errors import UserError
from tasks.store.models import LEASE_EXPIRED, TO_ANSWER, Checkpoint, Claim, Clock, Item, Result, settling
from tasks.store.packing import CHECKPOINT_TEXTS, RESULT_TEXTS, pack, unpack

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL, stage INTEGER NOT NULL, question_id TEXT NOT NULL, sample INTEGER NOT NULL,
    question TEXT NOT NULL, reference TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT, lease_expires REAL, token TEXT, error TEXT, result TEXT, previous TEXT, metadata TEXT, partial TEXT,
    UNIQUE (run, question_id, stage, sample));
CREATE INDEX IF NOT EXISTS items_claim ON items (run, status, lease_expires);
CREATE INDEX IF NOT EXISTS items_status ON items (run, status);
"""
# columns newer than some stores: added in place, nothing else touched
ADDED_COLUMNS = {("items", "metadata"): "TEXT", ("runs", "contamination"): "TEXT", ("items", "partial"): "TEXT",
                 ("runs", "texts"): "TEXT"}
ITEM_COLUMNS = ("id", "question_id", "question", "reference", "stage", "sample", "status", "result", "attempts",
                "worker", "token", "lease_expires", "error", "previous", "metadata", "partial")
SELECTED = ", ".join(ITEM_COLUMNS)
WITHOUT_TEXTS = {"question": "''", "previous": "NULL", "result": "json_remove(result, '$.response', '$.reasoning')",
                 "partial": "NULL"}


def _item(row: tuple) -> Item:
    values = dict(zip(ITEM_COLUMNS, row))
    values["id"] = str(values["id"])
    result = values["result"]
    values["result"] = Result.from_dict(unpack(json.loads(result), RESULT_TEXTS)) if result else None
    values["metadata"] = json.loads(values["metadata"]) if values["metadata"] else None
    values["partial"] = unpack(json.loads(values["partial"]), CHECKPOINT_TEXTS) if values["partial"] else None
    return Item(**values)


@contextmanager
def storage_faults(url: str) -> Iterator[None]:
    """A full disk or a damaged file as a UserError saying what to do (a passing lock timeout
    stays a plain, retryable error)."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        message = str(error)
        if isinstance(error, sqlite3.OperationalError) and "locked" in message:
            raise
        if "full" in message:
            hint = ("The disk is full: free space there (items being answered go back to other workers when their "
                    "lease ends)")
        elif "malformed" in message or "not a database" in message:
            hint = ("It is not an SQLite file, or a damaged one: restore it from a copy, or recover what is readable "
                    "with `sqlite3 FILE .recover | sqlite3 NEW.db`")
        else:
            hint = "Check that the file and its folder are writable and on a local disk"
        raise UserError(f"The SQLite store {url} failed: {message}. {hint}.") from error


def _json(result: Result | None) -> str | None:
    return json.dumps(pack(result.to_dict(), RESULT_TEXTS, binary=False)) if result is not None else None


class SqliteStore:
    def __init__(self, path: Path, busy_timeout_s: float = 60.0, clock: Clock = time.time):
        self.url, self.clock = f"sqlite:///{path}", clock
        if path.parent and not path.parent.is_dir():
            raise UserError(f"Cannot create the SQLite store {path}: folder {path.parent} does not exist.")
        with storage_faults(self.url):
            self._db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            for (table, column), kind in ADDED_COLUMNS.items():
                if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            (verdict,) = self._db.execute("PRAGMA quick_check(1)").fetchone()  # a damaged file is found here
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({verdict})")
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """An immediate transaction (the caller holds the lock); storage faults as UserError."""
        with storage_faults(self.url):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on a full disk or I/O error
                    self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> int:
        """Run one statement in an immediate transaction; return the rows it changed."""
        with self._lock, self._transaction():
            return self._changes(sql, params, many)

    def _changes(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> int:
        """Run one statement (the caller holds the lock, in a transaction); return the rows it changed."""
        before = self._db.total_changes
        (self._db.executemany if many else self._db.execute)(sql, params)
        return self._db.total_changes - before

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock, storage_faults(self.url):
            return self._db.execute(sql, params).fetchall()

    def ensure_run(self, run: str, config: dict[str, Any]) -> None:
        self._write("INSERT OR IGNORE INTO runs (name, config, created) VALUES (?, ?, ?)",
                    (run, json.dumps(config), self.clock()))

    def runs(self) -> list[str]:
        return [name for (name,) in self._read("SELECT name FROM runs ORDER BY created")]

    def run_config(self, run: str) -> dict[str, Any]:
        rows = self._read("SELECT config FROM runs WHERE name = ?", (run,))
        return json.loads(rows[0][0]) if rows else {}

    def set_contamination(self, run: str, report: dict[str, Any]) -> None:
        self._write("UPDATE runs SET contamination = ? WHERE name = ?", (json.dumps(report), run))

    def contamination(self, run: str) -> dict[str, Any] | None:
        rows = self._read("SELECT contamination FROM runs WHERE name = ?", (run,))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def set_texts_url(self, run: str, url: str) -> None:
        self._write("UPDATE runs SET texts = ? WHERE name = ?", (url, run))

    def texts_url(self, run: str) -> str | None:
        rows = self._read("SELECT texts FROM runs WHERE name = ?", (run,))
        return rows[0][0] if rows else None

    def seed(self, run: str, items: Iterable[Item]) -> int:
        rows = [(run, i.stage, i.question_id, i.sample, i.question, i.reference, i.status, _json(i.result), i.previous,
                 json.dumps(i.metadata) if i.metadata else None) for i in items]
        sql = ("INSERT OR IGNORE INTO items (run, stage, question_id, sample, question, reference, status, result,"
               " previous, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        return self._write(sql, rows, many=True)

    def claim(self, run: str, worker: str, limit: int, lease_seconds: float, *, max_attempts: int = 3) -> Claim:
        token, now = uuid.uuid4().hex, self.clock()
        with self._lock, self._transaction():
            # an item whose worker died holding it, for the last time: failed (a poison item)
            poisoned = self._db.execute(
                f"""UPDATE items SET status = 'failed', attempts = attempts + 1, lease_expires = NULL,
                    error = printf(?, attempts + 1) WHERE run = ? AND status = 'running' AND lease_expires < ?
                    AND attempts + 1 >= ? RETURNING {SELECTED}""", (LEASE_EXPIRED, run, now, max_attempts)
            ).fetchall()
            if poisoned:
                self._advance(run, *settling([_item(row) for row in poisoned]))
            rows = self._db.execute(  # expired leases first, then pending in order; each branch on the claim index
                f"""UPDATE items SET attempts = attempts + (status = 'running'), status = 'running', worker = ?,
                    token = ?, lease_expires = ? WHERE id IN (SELECT id FROM (
                        SELECT id FROM items WHERE run = ? AND status = 'running' AND lease_expires < ?)
                    UNION ALL SELECT id FROM (
                        SELECT id FROM items WHERE run = ? AND status = 'pending' ORDER BY id LIMIT ?) LIMIT ?)
                    RETURNING {SELECTED}""",
                (worker, token, now + lease_seconds, run, now, run, limit, limit),
            ).fetchall()
        return Claim(token, worker, sorted((_item(row) for row in rows), key=lambda i: int(i.id)), run=run)

    def _held(self, claim: Claim, ids: list[str]) -> tuple[str, list[Any]]:
        marks = ",".join("?" * len(ids))
        return f"id IN ({marks}) AND token = ? AND status = 'running'", [*map(int, ids), claim.token]

    def heartbeat(self, claim: Claim, lease_seconds: float) -> int:
        where, params = self._held(claim, claim.ids)
        return self._write(f"UPDATE items SET lease_expires = ? WHERE {where}", [self.clock() + lease_seconds, *params])

    def checkpoint(self, claim: Claim, checkpoints: dict[str, Checkpoint]) -> int:
        rows = [(json.dumps(pack(kept.to_dict(), CHECKPOINT_TEXTS, binary=False)), int(id_), claim.token)
                for id_, kept in checkpoints.items()]
        sql = "UPDATE items SET partial = ? WHERE id = ? AND token = ? AND status = 'running'"
        return self._write(sql, rows, many=True) if rows else 0

    def complete(self, claim: Claim, results: dict[str, Result]) -> int:
        return self.complete_many([(claim, results)])

    def complete_many(self, parts: list[tuple[Claim, dict[str, Result]]]) -> int:
        rows = [(_json(result), int(id_), claim.token) for claim, results in parts for id_, result in results.items()]
        sql = ("UPDATE items SET status = 'done', result = ?, lease_expires = NULL, error = NULL, partial = NULL"
               " WHERE id = ? AND token = ? AND status = 'running'")
        if not rows:
            return 0
        with self._lock, self._transaction():  # the answers and what they decide for the next samples, at once
            written = self._changes(sql, rows, many=True)
            for claim, results in parts:
                self._advance(claim.run, *settling([item for item in claim.items if item.id in results]))
        return written

    def fail(self, claim: Claim, ids: list[str], error: str, max_attempts: int) -> int:
        where, params = self._held(claim, ids)
        with self._lock, self._transaction():
            failed = self._changes(
                f"""UPDATE items SET attempts = attempts + 1, error = ?, lease_expires = NULL,
                    status = CASE WHEN attempts + 1 >= ? THEN 'failed' ELSE 'pending' END,
                    token = CASE WHEN attempts + 1 >= ? THEN token END,
                    worker = CASE WHEN attempts + 1 >= ? THEN worker END
                WHERE {where}""",
                [error, max_attempts, max_attempts, max_attempts, *params])
            self._advance(claim.run, *settling([item for item in claim.items if item.id in ids]))
        return failed

    def advance(self, run: str) -> None:
        enough = self.run_config(run).get("until_correct")
        with self._lock, self._transaction():
            self._advance(run, None, enough)

    def _advance(self, run: str, questions: set[str] | None, enough: int | None) -> None:
        """For items seeded with --until-correct N (the caller holds the lock, in a transaction): a
        question with N correct answers has its waiting samples cancelled; one with no sample
        pending or running has its next waiting sample made pending."""
        if not enough or questions == set():
            return
        listed = list(questions or ())
        scope = f"AND question_id IN ({','.join('?' * len(listed))})" if questions is not None else ""
        self._db.execute(
            f"""UPDATE items SET status = 'cancelled' WHERE run = ? AND stage = 0 AND status = 'waiting' {scope}
                AND question_id IN (SELECT question_id FROM items WHERE run = ? AND stage = 0 AND status = 'done'
                    AND json_extract(result, '$.correct') {scope} GROUP BY question_id HAVING COUNT(*) >= ?)""",
            [run, *listed, run, *listed, enough])
        self._db.execute(
            f"""UPDATE items SET status = 'pending' WHERE id IN (SELECT MIN(id) FROM items AS next
                WHERE run = ? AND stage = 0 AND status = 'waiting' {scope} AND NOT EXISTS (SELECT 1 FROM items
                    WHERE run = next.run AND stage = 0 AND question_id = next.question_id
                    AND status IN ('pending', 'running'))
                GROUP BY question_id)""", [run, *listed])

    def release(self, claim: Claim) -> int:
        where, params = self._held(claim, claim.ids)
        return self._write(
            f"UPDATE items SET status = 'pending', worker = NULL, token = NULL, lease_expires = NULL WHERE {where}",
            params,
        )

    def add_judgements(self, run: str, judgements: dict[str, dict[str, Any]]) -> int:
        rows = [(json.dumps(judgement), int(id_), run) for id_, judgement in judgements.items()]
        sql = ("UPDATE items SET result = json_set(result, '$.judge', json(?)) "
               "WHERE id = ? AND run = ? AND status = 'done'")
        return self._write(sql, rows, many=True) if rows else 0

    def counts(self, run: str) -> list[dict[str, Any]]:
        rows = self._read(
            """SELECT stage, status, worker, COUNT(*),
                SUM(status = 'running' AND lease_expires < ?) FROM items WHERE run = ?
            GROUP BY stage, status, worker ORDER BY stage, status, worker""",
            (self.clock(), run),
        )
        return [dict(zip(("stage", "status", "worker", "n", "expired"), row)) for row in rows]

    def devices(self, run: str) -> list[dict[str, Any]]:
        rows = self._read(
            """SELECT json_extract(result, '$.worker'), json_extract(result, '$.device'), COUNT(*),
                COALESCE(SUM(json_extract(result, '$.tokens')), 0), COALESCE(SUM(json_extract(result, '$.seconds')), 0),
                MAX(json_extract(result, '$.finished')) FROM items
            WHERE run = ? AND status = 'done' AND json_extract(result, '$.device') IS NOT NULL
            GROUP BY 1, 2 ORDER BY 1, 2""", (run,))
        return [dict(zip(("worker", "device", "done", "tokens", "seconds", "last"), row)) for row in rows]

    def storage(self) -> dict[str, float] | None:
        """None: a local file has no quota."""
        return None

    def longest_prompts(self, run: str, limit: int) -> list[Item]:
        marks = ",".join("?" * len(TO_ANSWER))
        rows = self._read(f"SELECT {SELECTED} FROM items WHERE run = ? AND status IN ({marks}) "
                          "ORDER BY length(question) + length(coalesce(previous, '')) DESC LIMIT ?",
                          (run, *TO_ANSWER, limit))
        return [_item(row) for row in rows]

    def items(self, run: str, *, texts: bool = True) -> list[Item]:
        columns = SELECTED if texts else ", ".join(WITHOUT_TEXTS.get(column, column) for column in ITEM_COLUMNS)
        rows = self._read(f"SELECT {columns} FROM items WHERE run = ? ORDER BY stage, question_id, sample", (run,))
        return [_item(row) for row in rows]

    def close(self) -> None:
        self._db.close()
