"""Chaos benchmark: `python bench/chaos.py [--items 10000] [--workers 4] [--every 6] [--no-baseline]`.

Real worker processes (`python flows/generate.py`, each `--devices cpu,cpu`, a tiny random model,
few new tokens) drain one SQLite store while a chaos loop, every few seconds, SIGKILLs a random
worker's process group (a notebook that dies) and starts a new one, SIGTERMs another (a notebook
told to stop: it must exit 0 within its grace period; a new one starts at once), or holds the
database locked for seconds. Triggers in the store's file record every claim and every write of
an answer, so the end can tell: every item done exactly once or failed with its error, none lost,
no answer written under a claim that had been taken over. Then the same run without chaos gives
the slowdown. All workers report to one local Prefect server.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.store.models import Item
from tasks.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
RUN = "chaos"
AUDIT = """
CREATE TABLE audit_claims (item INTEGER, token TEXT);
CREATE TRIGGER audit_claim AFTER UPDATE OF token ON items WHEN NEW.token IS NOT NULL AND NEW.token IS NOT OLD.token
BEGIN INSERT INTO audit_claims VALUES (NEW.id, NEW.token); END;
CREATE TABLE audit_writes (item INTEGER, token TEXT);
CREATE TRIGGER audit_write AFTER UPDATE OF result ON items WHEN NEW.result IS NOT NULL
BEGIN INSERT INTO audit_writes VALUES (NEW.id, NEW.token); END;
"""


def seed_store(path: Path, count: int) -> None:
    """`count` sums to answer, and the audit triggers."""
    store = SqliteStore(path)
    store.ensure_run(RUN, {"samples": 1})
    store.seed(RUN, [Item(question_id=f"q{i:05d}", question=f"What is {i} + {i % 7}?", reference=str(i + i % 7))
                     for i in range(count)])
    store._db.executescript(AUDIT)
    store.close()


@dataclass
class Fleet:
    """The worker processes, started and stopped as the chaos loop says."""

    db: Path
    model: Path
    env: dict[str, str]
    log_dir: Path
    worker_args: list[str]
    started: int = 0
    live: dict[str, subprocess.Popen] = field(default_factory=dict)
    stopping: dict[str, tuple[subprocess.Popen, float]] = field(default_factory=dict)  # SIGTERMed: process, when
    term_exits: dict[str, tuple[int, float]] = field(default_factory=dict)  # SIGTERMed: exit code, seconds to exit
    ended: dict[str, int] = field(default_factory=dict)  # worker -> exit code, for those that ended by themselves

    def start(self) -> None:
        name = f"chaos-{self.started}"
        self.started += 1
        args = [sys.executable, str(ROOT / "flows/generate.py"), "--store", f"sqlite:///{self.db}", "--run", RUN,
                "--model", str(self.model), "--worker", name, *self.worker_args]
        with open(self.log_dir / f"{name}.log", "w") as log:
            self.live[name] = subprocess.Popen(args, cwd=self.log_dir, env=self.env, start_new_session=True,
                                               stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        process = self.live.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def terminate(self, name: str) -> None:
        process = self.live.pop(name)
        process.send_signal(signal.SIGTERM)
        self.stopping[name] = (process, time.monotonic())

    def reap(self) -> None:
        """Note who ended: a SIGTERMed worker (its exit code and how long it took) or one whose run finished."""
        for name, (process, since) in list(self.stopping.items()):
            if process.poll() is not None:
                self.term_exits[name] = (process.returncode, time.monotonic() - since)
                del self.stopping[name]
        for name, process in list(self.live.items()):
            if process.poll() is not None:
                self.ended[name] = process.returncode
                del self.live[name]

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self.live or self.stopping) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.5)
        for name in [*self.live, *self.stopping]:
            os.killpg((self.live.get(name) or self.stopping[name][0]).pid, signal.SIGKILL)
            self.ended[name] = -1  # hung: counted as a failure below


def settled(db: Path) -> int:
    with sqlite3.connect(db, timeout=60) as connection:
        return connection.execute("SELECT COUNT(*) FROM items WHERE status IN ('done', 'failed')").fetchone()[0]


def hold_lock(db: Path, seconds: float) -> None:
    """Hold the database's write lock, as a slow writer or a stalled disk would."""
    connection = sqlite3.connect(db, timeout=60, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def audit(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=60) as connection:
        one = lambda sql: connection.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "done": one(f"SELECT COUNT(*) FROM items WHERE run = '{RUN}' AND status = 'done'"),
            "failed": one(f"SELECT COUNT(*) FROM items WHERE run = '{RUN}' AND status = 'failed' AND error != ''"),
            "lost": one(f"SELECT COUNT(*) FROM items WHERE run = '{RUN}' AND status NOT IN ('done', 'failed')"),
            "duplicates": one("SELECT COUNT(*) FROM (SELECT item FROM audit_writes GROUP BY item HAVING COUNT(*) > 1)"),
            "stale_writes": one("""SELECT COUNT(*) FROM audit_writes w WHERE w.token != (SELECT c.token FROM
                                   audit_claims c WHERE c.item = w.item ORDER BY c.rowid DESC LIMIT 1)"""),
            "reclaimed": one("SELECT COUNT(*) FROM (SELECT item FROM audit_claims GROUP BY item HAVING COUNT(*) > 1)"),
        }


def drain(*, folder: Path, model: Path, env: dict[str, str], items: int, workers: int, every: float | None,
          worker_args: list[str], timeout: float, seed: int = 0) -> dict[str, Any]:
    """Drain `items` with `workers` processes, with chaos every ~`every` seconds (None: none)."""
    folder.mkdir(parents=True)
    db = folder / "chaos.db"
    seed_store(db, items)
    rng = random.Random(seed)
    fleet = Fleet(db=db, model=model, env=env, log_dir=folder, worker_args=worker_args)
    kills = terms = locks = 0
    actions: list[str] = []
    started = time.monotonic()
    for _ in range(workers):
        fleet.start()
    next_chaos = started + (every or 0) * rng.uniform(0.5, 1.5)
    while settled(db) < items:
        if time.monotonic() > started + timeout:
            raise TimeoutError(f"{settled(db)} of {items} items settled after {timeout:.0f} s; logs in {folder}")
        fleet.reap()
        if every is not None and time.monotonic() >= next_chaos and fleet.live:
            if not actions:  # each of the three in every round of three, in a random order
                actions = rng.sample(("kill", "term", "lock"), 3)
            action = actions.pop()
            if action == "lock":
                hold_lock(db, rng.uniform(1, 4))
                locks += 1
            else:
                (fleet.kill if action == "kill" else fleet.terminate)(rng.choice(sorted(fleet.live)))
                kills, terms = kills + (action == "kill"), terms + (action == "term")
                fleet.start()
            next_chaos = time.monotonic() + every * rng.uniform(0.5, 1.5)
        elif not fleet.live and not fleet.stopping:
            fleet.start()  # every worker ended by itself while items are left: should not happen, shown below
        time.sleep(0.2)
    seconds = time.monotonic() - started
    fleet.wait_all(timeout=120)
    return {**audit(db), "items": items, "seconds": round(seconds, 1), "kills": kills, "terms": terms,
            "locks": locks, "term_exit_codes": sorted({code for code, _ in fleet.term_exits.values()}),
            "slowest_term_exit_s": round(max((s for _, s in fleet.term_exits.values()), default=0.0), 1),
            "term_exits": fleet.term_exits,
            "unclean_exits": {name: code for name, code in fleet.ended.items() if code != 0},
            "workers_started": fleet.started, "logs": str(folder)}


def worker_flags(batch_size: int, max_new_tokens: int) -> list[str]:
    return ["--devices", "cpu,cpu", "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens),
            "--lease-seconds", "10", "--grace-seconds", "5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4, help="worker processes at a time, each --devices cpu,cpu")
    parser.add_argument("--every", type=float, default=6.0, help="seconds between chaos actions, on average")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without chaos (no slowdown)")
    parser.add_argument("--keep", metavar="DIR", help="keep the stores and the workers' logs in this new folder")
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from bench.standins import build_model

    with tempfile.TemporaryDirectory() as scratch, prefect_test_harness(server_startup_timeout=180):
        tmp = args.keep or scratch
        model = build_model(Path(tmp) / "model", chat=True)
        env = {**{k: v for k, v in os.environ.items() if k != "MONGODB_URI"},
               "PREFECT_API_URL": PREFECT_API_URL.value()}
        common = dict(model=model, env=env, items=args.items, workers=args.workers, timeout=4 * 3600,
                      worker_args=worker_flags(args.batch_size, args.max_new_tokens))
        chaos = drain(folder=Path(tmp) / "chaos", every=args.every, **common)
        print(f"chaos: {chaos['items']:,} items with {args.workers} workers x 2 CPU devices in {chaos['seconds']} s; "
              f"{chaos['kills']} SIGKILLs, {chaos['terms']} SIGTERMs (exit codes {chaos['term_exit_codes']}, slowest "
              f"exit {chaos['slowest_term_exit_s']} s), {chaos['locks']} database locks; {chaos['workers_started']} "
              f"worker processes in all")
        print(f"done {chaos['done']:,}, failed with an error {chaos['failed']}, lost {chaos['lost']}, duplicates "
              f"{chaos['duplicates']}, answers written under a taken-over claim {chaos['stale_writes']}, reclaimed "
              f"{chaos['reclaimed']}, unclean exits {chaos['unclean_exits'] or 'none'}")
        if not args.no_baseline:
            calm = drain(folder=Path(tmp) / "calm", every=None, **common)
            print(f"without chaos: {calm['seconds']} s; slowdown under chaos {chaos['seconds'] / calm['seconds']:.2f}x")


if __name__ == "__main__":
    main()
