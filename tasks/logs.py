"""Log hygiene for every command and flow: secrets redacted, no tracebacks for user errors,
and no routine Prefect lines eating the free tier's log budget."""

from __future__ import annotations

import logging
import sys
import traceback

from tasks.errors import UserError
from tasks.secrets import redact

log = logging.getLogger("fleetgen")


class CleanLogs(logging.Filter):
    """Redacts credentials in every record (message and traceback), drops tracebacks of user
    errors, and drops Prefect's routine "Finished in state Completed()" line of every task run."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "prefect.task_runs" and record.levelno == logging.INFO and str(record.msg).startswith(
                "Finished in state Completed"):
            return False
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        elif record.exc_info and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class HubRetriesOnce(logging.Filter):
    """The hub's retry warnings (a dozen lines per file while it cannot be reached): the first
    one, saying that the others are hidden; the error that ends the retries says what to do."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "thrown while requesting" not in message and not message.startswith(("Retrying in", "Rate limited")):
            return True
        if HubRetriesOnce.said:
            return False
        HubRetriesOnce.said = True
        record.msg, record.args = f"{message} (the hub does not answer: retrying, its further retries not shown)", None
        return True


def install_log_filter() -> None:
    """Attach CleanLogs to every handler configured so far (Prefect's console and API ones too)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, CleanLogs) for f in handler.filters):
                handler.addFilter(CleanLogs())


def setup_logging() -> None:
    """`fleetgen: ...` lines on stderr for our own messages; CleanLogs on every handler."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fleetgen: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    install_log_filter()
    hub = logging.getLogger("huggingface_hub.utils._http")  # where the hub logs its retries
    if not any(isinstance(f, HubRetriesOnce) for f in hub.filters):
        hub.addFilter(HubRetriesOnce())
    logging.getLogger("huggingface_hub").propagate = False  # it has a handler of its own: once, not twice
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # optional CPU kernels, each start
