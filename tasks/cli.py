"""What every command line shares: user errors, secret redaction, quiet logs, the --store flag."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Callable

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@", re.I)


class UserError(Exception):
    """Bad input or environment: shown as one paragraph, no traceback, exit code 2."""


def redact(text: str) -> str:
    """Hide the password of every `scheme://user:password@host` in `text`."""
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


class CleanLogs(logging.Filter):
    """Redacts credentials in every record, drops tracebacks of user errors, and drops Prefect's
    routine "Finished in state Completed()" line of every task run (a worker runs three task runs
    a batch: the free tier's log budget is for what matters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "prefect.task_runs" and record.levelno == logging.INFO and str(record.msg).startswith(
                "Finished in state Completed"):
            return False
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
            record.exc_text = None
        message = record.getMessage()
        if _CREDENTIALS.search(message):
            record.msg, record.args = redact(message), None
        return True


def install_log_filter() -> None:
    """Attach CleanLogs to every handler configured so far (Prefect's console and API ones too)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, CleanLogs) for f in handler.filters):
                handler.addFilter(CleanLogs())


def setup_logging() -> None:
    """`fleetgen: ...` lines on stderr for our own messages; CleanLogs on every handler."""
    log = logging.getLogger("fleetgen")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fleetgen: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    install_log_filter()


def command_parser(script: str, doc: str) -> argparse.ArgumentParser:
    """A command line's parser, with the --store and --run every flow takes; the description is
    the first line of the script's docstring."""
    parser = argparse.ArgumentParser(prog=f"python {script}", description=doc.strip().split("\n")[0])
    add_store_arg(parser)
    add_run_arg(parser)
    return parser


def add_store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="work store: mongodb://..., mongodb+srv://... or sqlite:///PATH "
        "(default: env MONGODB_URI, else sqlite:///./fleetgen.db)",
    )


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's main; a UserError becomes one clear paragraph on stderr and exit code 2."""
    setup_logging()
    try:
        return main(argv) or 0
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


DEFAULT_RUN = "gsm8k-test"


def add_run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=DEFAULT_RUN, metavar="NAME", help=f"run name (default: {DEFAULT_RUN})")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value
