"""Shared fixtures: stores of every backend on a clock the tests move, one Prefect test server
for the session, tiny local models, and running the command lines as a user would."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from bench.standins import build_adapter, build_model, mongomock_store
from tasks.prefect_server import stop_server
from tasks.store import Store
from tasks.store.mongo import MongoStore
from tasks.store.sqlite import SqliteStore
from tests.support import FakeClock

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", "mongomock", "mongodb"]
UNIT = {"test_grading.py", "test_store.py", "test_worker_loop.py", "test_exchange_parts.py", "test_config.py",
        "test_docs.py"}  # `-m unit`


SLOW_FIRST = ("test_vllm.py", "test_chaos.py", "test_api_engines.py", "test_generate_flow.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The unit tier (`python -m pytest -m unit`, under 2 minutes): the grader, the store's
    conformance suite on SQLite and mongomock, the device's exchange with the store, the configs
    and their command lines, the docs. The slowest modules run first, so the two test processes
    end together rather than one waiting on the other's last long test."""
    for item in items:
        if item.path.name in UNIT:
            item.add_marker(pytest.mark.unit)
    items.sort(key=lambda item: SLOW_FIRST.index(item.path.name) if item.path.name in SLOW_FIRST else len(SLOW_FIRST))


def make_store(backend: str, tmp_path: Path, clock: FakeClock) -> Store:
    """A fresh, empty store of the given backend whose leases run on `clock`."""
    if backend == "sqlite":
        return SqliteStore(tmp_path / "work.db", clock=clock)
    if backend == "mongomock":
        return mongomock_store(clock=clock)
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip("real MongoDB tests need MONGODB_URI (none set; mongomock and SQLite ran instead)")
    store = MongoStore.connect(uri)
    return MongoStore(store._db.client[f"fleetgen_test_{uuid.uuid4().hex[:8]}"], store.url, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    work = make_store(request.param, tmp_path, clock)
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
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}), prefect_test_harness(server_startup_timeout=120):
        yield {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOCAL_STORAGE_PATH": str(storage)}


def run_script(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python <script> ...` (a path under the repository) as a user would."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=cli_env(env),
                          capture_output=True, text=True, timeout=timeout)


def run_flow_cli(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python flows/<script> ...` as a user would."""
    return run_script(f"flows/{script}", *args, cwd=cwd, env=env, timeout=timeout)


def cli_env(env: dict[str, str] | None) -> dict[str, str]:
    """This environment less MONGODB_URI and PREFECT_API_URL, with the session's Prefect home
    (see `shared_prefect_home`), plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "PREFECT_API_URL")}
    return {**full_env, "PREFECT_HOME": str(COMMAND_PREFECT_HOME), **(env or {})}


COMMAND_PREFECT_HOME = Path(tempfile.gettempdir()) / "fleetgen-tests-unset"  # replaced for the session below


@pytest.fixture(scope="session", autouse=True)
def shared_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Prefect home of the command lines a test runs without PREFECT_API_URL: they share
    one background Prefect server there, as on a user's machine, stopped when the session ends."""
    global COMMAND_PREFECT_HOME
    COMMAND_PREFECT_HOME = tmp_path_factory.mktemp("prefect-home")
    yield COMMAND_PREFECT_HOME
    stop_server(COMMAND_PREFECT_HOME / "fleetgen-server")


@pytest.fixture(autouse=True)
def fleetgen_logger_as_it_was() -> Iterator[None]:
    """A test that runs a flow in its own process sets fleetgen's logger up (a handler of its own,
    no propagation); each test leaves it as it found it, so a later test's caplog sees its lines."""
    logger = logging.getLogger("fleetgen")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate
    logger.setLevel(level)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has a chat template."""
    return build_model(tmp_path_factory.mktemp("tiny-chat"), chat=True)


@pytest.fixture(scope="session")
def tiny_plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has no chat template."""
    return build_model(tmp_path_factory.mktemp("tiny-plain"), chat=False)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_adapter(tiny_model, tmp_path_factory.mktemp("tiny-lora"))
