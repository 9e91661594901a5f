"""Shared fixtures: stores of every backend, and one Prefect test server for the session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from bench.store import mongomock_store
from tasks.store import Store
from tasks.store_mongo import MongoStore
from tasks.store_sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", "mongomock", "mongodb"]


def make_store(backend: str, tmp_path: Path) -> Store:
    """A fresh, empty store of the given backend."""
    if backend == "sqlite":
        return SqliteStore(tmp_path / "work.db")
    if backend == "mongomock":
        return mongomock_store()
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip("real MongoDB tests need MONGODB_URI (none set; mongomock and SQLite ran instead)")
    store = MongoStore.connect(uri)
    test_db = store._db.client[f"fleetgen_test_{uuid.uuid4().hex[:8]}"]
    return MongoStore(test_db, store.url)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    work = make_store(request.param, tmp_path)
    yield work
    if request.param == "mongodb":
        work._db.client.drop_database(work._db.name)
    work.close()


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One Prefect test server for the session (results in a temporary folder); yields the
    environment that points command-line subprocesses at it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}), prefect_test_harness():
        yield {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOCAL_STORAGE_PATH": str(storage)}


def run_flow_cli(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python flows/<script> ...` as a user would."""
    return subprocess.run([sys.executable, str(ROOT / "flows" / script), *args], cwd=cwd, env=cli_env(env),
                          capture_output=True, text=True, timeout=timeout)


def cli_env(env: dict[str, str] | None) -> dict[str, str]:
    """This environment less MONGODB_URI and PREFECT_API_URL, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "PREFECT_API_URL")}
    return {**full_env, **(env or {})}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has a chat template."""
    from bench.tiny_models import build_model

    return build_model(tmp_path_factory.mktemp("tiny-chat"), chat=True)


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has no chat template."""
    from bench.tiny_models import build_model

    return build_model(tmp_path_factory.mktemp("tiny-plain"), chat=False)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.tiny_models import build_adapter

    return build_adapter(tiny_model, tmp_path_factory.mktemp("tiny-lora"))
