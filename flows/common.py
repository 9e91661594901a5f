"""Shared by the flow scripts: Prefect defaults (set before Prefect is imported) and task helpers."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from tasks.cli import UserError, setup_logging

_ephemeral_lock: IO[str] | None = None


def isolate_ephemeral_database() -> None:
    """With no Prefect API configured, every process starts a temporary Prefect server on the
    same SQLite file, and two workers on one machine then fail with "database is locked". The
    first fleetgen process keeps Prefect's database; each later one gets a private one, removed
    at exit. (For one view of every worker, run `prefect server start` or use Prefect Cloud.)"""
    global _ephemeral_lock
    configured = ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
    if any(os.environ.get(name) for name in configured):
        return
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    lock = open(home / "fleetgen-ephemeral.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _ephemeral_lock = lock  # held until this process exits
    except BlockingIOError:
        lock.close()
        private = tempfile.mkdtemp(prefix="fleetgen-prefect-")
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{private}/prefect.db"
        logging.getLogger("fleetgen").info(
            "another fleetgen process uses Prefect's local database: this one keeps its flow runs in a private "
            "one (set PREFECT_API_URL to a `prefect server start` or Prefect Cloud to see every worker together)")


# No telemetry from the temporary local server (it cannot reach the internet on most fleets anyway).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
setup_logging()
isolate_ephemeral_database()

from prefect import Task  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.states import State  # noqa: E402
from pydantic import SecretStr  # noqa: E402

setup_logging()  # again: Prefect configured its log handlers on import


def retry_unless_user_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry transient failures only: bad input fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


def reveal(store: SecretStr | str | None) -> str | None:
    """The store URL from a flow parameter (a SecretStr, so the UI never shows the password)."""
    return store.get_secret_value() if isinstance(store, SecretStr) else store
