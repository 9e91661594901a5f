"""Redaction of secrets and the log filter that keeps user errors free of tracebacks."""

from __future__ import annotations

import logging

from tasks.cli import CleanLogs, UserError, redact


def test_redact_hides_every_password() -> None:
    text = "mongodb+srv://alice:pa55@cluster0.x.mongodb.net/db and mongodb://bob:w0rd@h:27017"
    assert redact(text) == "mongodb+srv://alice:***@cluster0.x.mongodb.net/db and mongodb://bob:***@h:27017"
    assert redact("sqlite:///tmp/x.db mongodb://h:1/db") == "sqlite:///tmp/x.db mongodb://h:1/db"


def record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, (), exc_info)


def test_clean_logs_drops_user_error_tracebacks_and_redacts() -> None:
    entry = record("failed on %s", UserError("bad line"))
    entry.args = ("mongodb://u:secret@h",)
    assert CleanLogs().filter(entry) and entry.exc_info is None
    assert entry.getMessage() == "failed on mongodb://u:***@h"
    bug = record("crashed", ValueError("a bug"))
    assert CleanLogs().filter(bug) and bug.exc_info is not None  # real bugs keep their traceback


def test_clean_logs_drops_routine_task_run_lines_only() -> None:
    routine = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished in state Completed()", (), None)
    failed = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Finished in state Failed('x')", (), None)
    mine = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "cpu: 16 items, 900 tokens", (), None)
    assert not CleanLogs().filter(routine)
    assert CleanLogs().filter(failed) and CleanLogs().filter(mine)
