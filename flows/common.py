"""Shared by the flow scripts: Prefect defaults (set before Prefect is imported) and task helpers."""

from __future__ import annotations

import os

# No telemetry from the temporary local server (it cannot reach the internet on most fleets anyway).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import Task  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.states import State  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from tasks.cli import UserError, install_log_filter  # noqa: E402

install_log_filter()  # Prefect configured its log handlers on import


def retry_unless_user_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry transient failures only: bad input fails the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


def reveal(store: SecretStr | str | None) -> str | None:
    """The store URL from a flow parameter (a SecretStr, so the UI never shows the password)."""
    return store.get_secret_value() if isinstance(store, SecretStr) else store
