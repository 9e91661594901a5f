"""What every flow script shares: its first step inside a flow run, and the Prefect session its
command line runs in. Importing this module changes nothing; the command lines call these."""

from __future__ import annotations

from contextlib import contextmanager
from types import EllipsisType
from typing import Any, Callable, Iterator, TypeVar

from tasks.config import DEFAULT_RUN, RunConfig
from tasks.config.base import Config
from tasks.logs import setup_logging
from tasks.prefect_server import local_server_url
from tasks.store.urls import check_store

ConfigT = TypeVar("ConfigT", bound=Config)
RunConfigT = TypeVar("RunConfigT", bound=RunConfig)
ResultT = TypeVar("ResultT")


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
    """Prefect settings for a command line's flow runs: PREFECT_API_URL when configured (a server
    or Prefect Cloud), else the machine's shared local server (started in the background by the
    first command that needs it), never a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings({PREFECT_API_URL: local_server_url()}):
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
