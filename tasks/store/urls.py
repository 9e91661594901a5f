"""Which store a URL names: checked (its password registered for redaction), resolved from the
flag, MONGODB_URI or the default SQLite file, and opened."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pydantic import SecretStr

from tasks.errors import UserError
from tasks.secrets import redact, register_url
from tasks.store.models import Clock
from tasks.store.protocol import Store
from tasks.store.runs import match_runs

DEFAULT_SQLITE_FILE = "fleetgen.db"
SCHEMES = ("mongodb://", "mongodb+srv://", "sqlite:///")
PREFECT_HIDDEN_SECRET = "**********"  # how Prefect shows a secret parameter


def check_store_url(url: str) -> str:
    """`url` if its scheme is one we open (its password registered for redaction); else ValueError."""
    register_url(url)
    if url == PREFECT_HIDDEN_SECRET:
        raise ValueError("the store URL arrived masked ('**********'): Prefect never hands a secret back, so set "
                         "MONGODB_URI in the environment where the flow runs instead of passing the URL")
    if not url.startswith(SCHEMES):
        raise ValueError(f"unknown store URL {redact(url)!r}: use mongodb://..., mongodb+srv://... (MongoDB, e.g. "
                         "Atlas) or sqlite:///PATH (an embedded file), via --store or the MONGODB_URI variable")
    return url


def resolve_store_url(url: SecretStr | str | None) -> str:
    """The given URL, else env MONGODB_URI, else an SQLite file in the working directory."""
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    url = url or os.environ.get("MONGODB_URI") or f"sqlite:///{Path.cwd() / DEFAULT_SQLITE_FILE}"
    try:
        return check_store_url(url)
    except ValueError as error:
        message = str(error)
        raise UserError(f"{message[:1].upper()}{message[1:]}.") from None


def open_store(url: SecretStr | str | None = None, clock: Clock = time.time) -> Store:
    """Open (and check) the store a URL names; raise UserError with a clear message."""
    url = resolve_store_url(url)
    if url.startswith("sqlite:///"):
        from tasks.store.sqlite import SqliteStore

        return SqliteStore(Path(url.removeprefix("sqlite:///")), clock=clock)
    from tasks.store.mongo import MongoStore

    return MongoStore.connect(url, clock=clock)


def check_store(url: SecretStr | str | None, runs: str | None = None) -> None:
    """Before Prefect starts (seconds), fail fast on a bad store URL or an unknown run (`runs` as
    `match_runs` reads it); say which store this is."""
    store = open_store(url)
    try:
        logging.getLogger("fleetgen").info(f"store: {store.url}")
        if runs is not None:
            match_runs(store, runs)
    finally:
        store.close()
