"""Secrets never shown: redaction of URL passwords (also with `@` or spaces in them) and of
registered values, in messages, log records and their tracebacks; bad MongoDB URLs give one
clear line through the real command line."""

from __future__ import annotations

import logging

import pytest

from tasks.errors import UserError
from tasks.logs import CleanLogs, HubRetriesOnce, setup_logging
from tasks.secrets import redact, register_secret, register_url
from tests.conftest import run_flow_cli


def test_redact_hides_every_password() -> None:
    text = "mongodb+srv://alice:pa55@cluster0.x.mongodb.net/db and mongodb://bob:w0rd@h:27017"
    assert redact(text) == "mongodb+srv://alice:***@cluster0.x.mongodb.net/db and mongodb://bob:***@h:27017"
    assert redact("sqlite:///tmp/x.db mongodb://h:1/db") == "sqlite:///tmp/x.db mongodb://h:1/db"


def test_an_unescaped_at_sign_does_not_leak_the_rest_of_the_password() -> None:
    assert redact("at mongodb://user:PW@123@host/db.") == "at mongodb://user:***@host/db."


def test_registered_passwords_are_masked_even_with_spaces_and_escapes() -> None:
    register_url("mongodb://carol:my very secret@h/db")
    assert redact("connect mongodb://carol:my very secret@h/db failed") == "connect mongodb://carol:***@h/db failed"
    register_url("mongodb://dave:p%40ss%20w0rd@h/db")  # also its decoded form, e.g. in a driver's message
    assert redact("auth failed for p@ss w0rd and p%40ss%20w0rd") == "auth failed for *** and ***"
    register_secret("sk-test-0123456789")
    assert redact("key=sk-test-0123456789") == "key=***"


def test_user_errors_are_redacted_when_raised() -> None:
    assert str(UserError("cannot reach mongodb://u:hunter22@h")) == "cannot reach mongodb://u:***@h"


def record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, message, (), exc_info)


def test_clean_logs_drops_user_error_tracebacks_and_redacts() -> None:
    entry = record("failed on %s", UserError("bad line"))
    entry.args = ("mongodb://u:secret@h",)
    assert CleanLogs().filter(entry) and entry.exc_info is None
    assert entry.getMessage() == "failed on mongodb://u:***@h"
    bug = record("crashed", ValueError("a bug near mongodb://u:s3cret@h"))
    assert CleanLogs().filter(bug) and bug.exc_info is not None  # real bugs keep their traceback, redacted
    assert "ValueError: a bug near mongodb://u:***@h" in bug.exc_text and "s3cret" not in bug.exc_text


def test_clean_logs_drops_routine_task_run_lines_only() -> None:
    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, message, (), None)

    routine = record(logging.INFO, "Finished in state Completed()")
    failed = record(logging.ERROR, "Finished in state Failed('x')")
    mine = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "cpu: 16 items, 900 tokens", (), None)
    assert not CleanLogs().filter(routine)
    assert CleanLogs().filter(failed) and CleanLogs().filter(mine)


def test_the_hubs_retry_warnings_are_said_once(monkeypatch) -> None:
    import logging.handlers

    monkeypatch.setattr(HubRetriesOnce, "said", False)
    setup_logging()
    shown = logging.handlers.BufferingHandler(100)
    logging.getLogger("huggingface_hub").addHandler(shown)
    try:
        http = logging.getLogger("huggingface_hub.utils._http")
        for attempt in range(1, 6):  # as the hub logs a file it cannot reach
            http.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/x")
            http.warning(f"Retrying in {2 ** attempt}s [Retry {attempt}/5].")
        logging.getLogger("huggingface_hub.file_download").warning("something else")
    finally:
        logging.getLogger("huggingface_hub").removeHandler(shown)
    messages = [record.getMessage() for record in shown.buffer]
    assert len(messages) == 2 and "further retries not shown" in messages[0] and messages[1] == "something else"


@pytest.mark.parametrize("url, message", [
    ("mongodb://alice:PW@123@127.0.0.1:9/db", "The MongoDB URL mongodb://alice:***@127.0.0.1:9/db is not valid"),
    ("mongodb://alice:my secret@127.0.0.1:9/db", "Cannot reach MongoDB at mongodb://alice:***@127.0.0.1:9/db"),
    ("mongodb://alice:pw-99999@127.0.0.1:99999/db", "Port must be an integer between 0 and 65535"),
])
def test_bad_mongodb_urls_are_one_clear_line(tmp_path, url: str, message: str) -> None:
    result = run_flow_cli("status.py", "--store", url, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    password = url.split("alice:")[1].rsplit("@", 1)[0]
    assert password not in result.stdout + result.stderr and "Traceback" not in result.stderr
