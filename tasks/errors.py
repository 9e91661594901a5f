"""Errors a user can fix, and the retry rule that follows from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.secrets import redact

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import TaskRun
    from prefect.states import State


class UserError(Exception):
    """Bad input or environment: shown as one paragraph, no traceback, exit code 2. Its message
    is redacted when raised, so no password reaches a log, a terminal or Prefect's database."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def retry_unless_user_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """A Prefect `retry_condition_fn`: retry transient failures only, since bad input fails the
    same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)
