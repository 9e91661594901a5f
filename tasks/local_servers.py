"""What the servers fleetgen starts on this machine share (the worker's inference servers, the
local Prefect server): a free port, a health check, and knowing from a server's log that its port
was taken between the choice and the bind, so that it is started again on another port."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx

PORT_TAKEN = re.compile(r"already in use|\[errno 98\]|eaddrinuse", re.I)  # uvicorn's words, and Prefect's own check
PORT_TRIES = 3


def free_port() -> int:
    """A port nothing listens on now (another process may take it before the server binds it:
    `port_taken` tells, and the caller tries another)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(url: str) -> bool:
    """Whether `url/health` answers 200 now."""
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def port_taken(log: Path, since: int = 0) -> bool:
    """Whether the server's log, from byte `since` on, says its port was already in use."""
    try:
        with log.open("rb") as file:
            file.seek(since)
            return bool(PORT_TAKEN.search(file.read().decode(errors="replace")))
    except OSError:
        return False
