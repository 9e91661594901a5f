"""No password or API key in Prefect's database, its result storage, any output or the store,
from every flow and every entry point: in-process Python calls and real command lines (flag and
MONGODB_URI), against the session's real Prefect server. There is no MongoDB server here, so the
connection itself is swapped for a stand-in (mongomock in process; SQLite in the command lines,
through a sitecustomize the test puts on PYTHONPATH); the URL with its password travels every
real path up to it: the config, the flow parameters, logs, messages, Prefect's API."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL

from bench.standins import mongomock_store
from flows.evaluate import evaluate
from flows.export import export
from flows.generate import generate
from flows.refine import refine
from flows.seed import seed
from tasks.config import EvaluateConfig, ExportConfig, RefineConfig, SeedConfig, WorkerConfig
from tasks.store.mongo import MongoStore
from tasks.store.sqlite import SqliteStore
from tests.conftest import run_flow_cli
from tests.support import SerializedStore, settled_events_since

PASSWORD = "Sup3r-Secret-Pw"
URL = f"mongodb://alice:{PASSWORD}@db.example:27017/fleet"
KEYS = {"OPENAI_API_KEY": "sk-fleetgen-test-0123456789", "HF_TOKEN": "hf_fleetgenTestToken42"}
SECRETS = [PASSWORD, *KEYS.values()]
SITECUSTOMIZE = """
import os
from pathlib import Path
from tasks.secrets import redact
from tasks.store.mongo import MongoStore
from tasks.store.sqlite import SqliteStore


def connect(cls, url, **options):  # no MongoDB server here: the same calls land in an SQLite file
    store = SqliteStore(Path(os.environ["FLEETGEN_TEST_MONGODB_FILE"]))
    store.url = redact(url)
    return store


MongoStore.connect = classmethod(connect)
"""


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [secret for secret in SECRETS if secret.encode() in data]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_no_secret_reaches_prefect_outputs_or_the_store(prefect_env, tmp_path: Path, tiny_model: Path,
                                                        monkeypatch, capsys, caplog) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    shared = mongomock_store()
    monkeypatch.setattr(MongoStore, "connect", classmethod(
        lambda cls, url, **options: SerializedStore(MongoStore(shared._db, url))))
    outputs: list[str] = []
    since = datetime.now(timezone.utc)

    # 1. Every flow as a Python call, the URL in the config.
    seed(SeedConfig(store=URL, run="py", limit=4))
    generate(WorkerConfig(store=URL, run="py", model={"model": str(tiny_model)}, devices="cpu", batch_size=4,
                          sampling={"max_new_tokens": 4}))
    refine(RefineConfig(store=URL, run="py"))
    evaluate(EvaluateConfig(store=URL, run="py", json_path=str(tmp_path / "py.json")))
    export(ExportConfig(store=URL, run="py", out=str(tmp_path / "py.jsonl")))

    # 2. Every command line, the URL as --store (and once from MONGODB_URI).
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**prefect_env, **KEYS, "PYTHONPATH": str(tmp_path / "site"),
           "FLEETGEN_TEST_MONGODB_FILE": str(tmp_path / "stand-in.db")}
    commands = [
        ("seed.py", "--run", "cli", "--limit", "4"),
        ("generate.py", "--run", "cli", "--model", str(tiny_model), "--devices", "cpu", "--batch-size", "4",
         "--max-new-tokens", "4"),
        ("refine.py", "--run", "cli"),
        ("evaluate.py", "--run", "cli", "--json", str(tmp_path / "cli.json")),
        ("export.py", "--run", "cli", "--out", str(tmp_path / "cli.jsonl")),
        ("status.py", "--run", "cli"),
    ]
    for script, *args in commands:
        result = run_flow_cli(script, "--store", URL, *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert "alice:***@db.example" in result.stderr  # the store is named, masked
        outputs += [result.stdout, result.stderr]
    from_env = run_flow_cli("refine.py", "--run", "cli", cwd=tmp_path, env={**env, "MONGODB_URI": URL})
    assert from_env.returncode == 0, from_env.stderr
    outputs += [from_env.stdout, from_env.stderr]

    # Everything Prefect was sent reaches its database before we look: the 11 flow runs' ends too.
    APILogWorker.drain_all()
    EventsWorker.drain_all()
    settled_events_since(since, until=lambda events: events["prefect.flow-run.Completed"] >= 11)
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err, caplog.text]

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    ours = [run for run in runs if isinstance(run.parameters.get("config"), dict)
            and run.parameters["config"].get("run") in ("py", "cli")]
    # masked where it was passed; absent (None) for the run that read MONGODB_URI
    assert {run.parameters["config"]["store"] for run in ours} == {"**********", None}
    assert len({run.flow_id for run in ours}) == 5  # seed, generate, refine, evaluate, export

    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().removeprefix("sqlite+aiosqlite:///")).parent
    scanned: dict[str, Any] = {
        **files_under(database),  # Prefect's database (flow runs, parameters, logs, events, artifacts)
        **files_under(Path(PREFECT_LOCAL_STORAGE_PATH.value())),  # persisted task results
        **{f"output {n}": text for n, text in enumerate(outputs)},
        **{str(path): path.read_bytes() for path in tmp_path.glob("*.json*")},  # evaluate and export files
        "stand-in store": (tmp_path / "stand-in.db").read_bytes(),
        "mongomock store": json.dumps([*shared._db["runs"].find(), *shared._db["items"].find({}, {"_id": 0})],
                                      default=str),
    }
    assert len(scanned) > 10 and any(name.endswith("prefect-test.db") for name in scanned)
    found = {name: leaks(content) for name, content in scanned.items() if leaks(content)}
    assert found == {}
    # the stand-ins really held the work: every flow ran for real
    assert shared._db["items"].count_documents({"run": "py", "stage": 0, "status": "done"}) == 4
    assert sum(SqliteStore(tmp_path / "stand-in.db").items("cli")[n].status == "done" for n in range(4)) == 4
