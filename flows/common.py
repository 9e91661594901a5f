"""What every flow script shares: its first step inside a flow run, and the Prefect session its
command line runs in. Importing this module changes nothing; the command lines call these."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import EllipsisType
from typing import Any, Callable, Iterator, TypeVar

from tasks.config import DEFAULT_RUN, RunConfig
from tasks.config.base import Config
from tasks.logs import setup_logging
from tasks.store import check_store

ConfigT = TypeVar("ConfigT", bound=Config)
RunConfigT = TypeVar("RunConfigT", bound=RunConfig)
ResultT = TypeVar("ResultT")
EPHEMERAL_STARTUP_SECONDS = 180


def config_values() -> dict[str, Any]:
    """The flow run's `config` parameter as plain values, unvalidated (a bad one fails in the flow, clearly)."""
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    return config if isinstance(config, dict) else vars(config) if config is not None else {}


def run_name() -> str:
    """A flow run's name: the run(s) it works on, so one run's whole history reads together."""
    values = config_values()
    if values.get("suite"):
        return f"{values.get('run_prefix') or values['suite']}-*"
    return str(values.get("runs") or values.get("run") or DEFAULT_RUN)


def start_flow(config_class: type[ConfigT], config: ConfigT | dict[str, Any] | None) -> ConfigT:
    """A flow's first step, wherever it was started from (command line, deployment, Python):
    secrets redacted in every log handler, then the settings validated with the same messages
    as on the command line."""
    setup_logging()
    return config_class.load(config)


@contextmanager
def prefect_session() -> Iterator[None]:
    """Prefect settings for a command line's flow runs: no telemetry from a temporary server,
    and, with no Prefect API configured, a temporary server that does not fight over Prefect's
    local database with another fleetgen process on this machine (the first one keeps it; later
    ones get a private one, removed at exit)."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED,
                                  PREFECT_SERVER_DATABASE_CONNECTION_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  get_current_settings, temporary_settings)

    updates: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if not PREFECT_API_URL.value():  # a busy 2-core machine needs more than Prefect's 20 s to start it
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = max(
            EPHEMERAL_STARTUP_SECONDS, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        logging.getLogger("fleetgen").info(
            f"no PREFECT_API_URL: starting a temporary Prefect server (up to {EPHEMERAL_STARTUP_SECONDS} s on a busy "
            "machine; set PREFECT_API_URL to a `prefect server start` or Prefect Cloud to skip this)")
    with ExitStack() as stack:
        settings = get_current_settings()
        if not PREFECT_API_URL.value() and not os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL"):
            lock = stack.enter_context(open(settings.home / "fleetgen-ephemeral.lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the session ends
            except BlockingIOError:
                private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleetgen-prefect-")))
                updates[PREFECT_SERVER_DATABASE_CONNECTION_URL] = f"sqlite+aiosqlite:///{private}/prefect.db"
                logging.getLogger("fleetgen").info(
                    "another fleetgen process uses Prefect's local database: this one keeps its flow runs in a private "
                    "one (set PREFECT_API_URL to a `prefect server start` or Prefect Cloud to see every worker together)")
        stack.enter_context(temporary_settings(updates))
        yield


def run_from_command_line(flow: Callable[[RunConfigT], ResultT], config: RunConfigT, *,
                          runs: str | None | EllipsisType = ..., tags: tuple[str, ...] = ()) -> ResultT:
    """A command line's flow run: the store and the runs it names (`runs`; by default the
    config's run; None: none to check yet) checked first, in seconds, before Prefect starts; then
    the flow in the command lines' Prefect session, tagged `run:<run>` (or with the `run:` tags given)."""
    from prefect import tags as prefect_tags

    check_store(config.store, config.run if runs is ... else runs)
    run_tags = [tag for tag in tags if tag.startswith("run:")] or [f"run:{getattr(config, 'runs', None) or config.run}"]
    with prefect_session(), prefect_tags(*run_tags, *(tag for tag in tags if not tag.startswith("run:"))):
        return flow(config)
