"""One local Prefect server per machine, shared by every fleetgen command: with no
PREFECT_API_URL configured, the first command that needs Prefect starts `prefect server start`
in the background (its own port, and its own home and database under Prefect's home) and every
later command, in any process, reuses it. `python -m tasks.prefect_server [status|stop]`."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tasks.errors import UserError
from tasks.local_servers import PORT_TRIES, free_port, healthy, port_taken

log = logging.getLogger("fleetgen")
START_SECONDS = 180.0  # a busy 2-core machine takes 10-40 s, more under load
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "URI")


def server_home() -> Path:
    """`fleetgen-server` under Prefect's home: the server's state, database and log."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "fleetgen-server"


def read_state(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """The process runs and is a Prefect server (not another process that got its number). Its
    command line reads empty while it is being started (between the fork's return and the end of
    its exec) and once it has ended (a zombie): only the process's state tells these apart."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if command:
            return b"prefect" in command
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def running_server(home: Path | None = None) -> dict[str, Any] | None:
    """The shared server's state when it answers now, else None."""
    state = read_state(home or server_home())
    return state if state and healthy(state["url"]) else None


def _start(home: Path) -> dict[str, Any]:
    port = free_port()
    env = {name: value for name, value in os.environ.items()  # none of the user's secrets or Prefect settings
           if not name.startswith("PREFECT_") and not any(marker in name.upper() for marker in SECRET_MARKERS)}
    url = f"http://127.0.0.1:{port}/api"
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=url)  # the UI's pages ask this address (Prefect's default is port 4200)
    with open(home / "server.log", "ab") as output:
        log_from = output.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=home,
            start_new_session=True)  # outlives this command, and Ctrl-C in its terminal
    state = {"url": url, "ui": f"http://127.0.0.1:{port}", "pid": process.pid,
             "log": str(home / "server.log"), "log_from": log_from}
    (home / "server.json").write_text(json.dumps(state))
    return state


def _cannot_start(state: dict[str, Any], why: str) -> UserError:
    try:
        tail = Path(state["log"]).read_text(errors="replace").strip().splitlines()[-5:]
    except OSError:
        tail = []
    last = f" Its log ends: {' / '.join(tail)}." if tail else ""
    return UserError(
        f"The local Prefect server {why} (log: {state['log']}).{last} Start one by hand in another terminal with "
        "`prefect server start` and run the command again with PREFECT_API_URL=http://127.0.0.1:4200/api, or set "
        "PREFECT_API_URL to your Prefect Cloud workspace (`prefect cloud login`).")


@contextmanager
def _start_lock(home: Path, deadline: float) -> Iterator[None]:
    with open(home / "start.lock", "w") as lock:
        said = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"Another fleetgen command has been starting the local Prefect server for over "
                                    f"{START_SECONDS:.0f} s (log: {home / 'server.log'}). Run the command again in a "
                                    "minute, or see `python -m tasks.prefect_server status`.") from None
                if not said:
                    log.info("another fleetgen command is starting the local Prefect server; waiting for it")
                    said = True
                time.sleep(0.5)
        yield


def local_server_url(home: Path | None = None, wait_seconds: float = START_SECONDS) -> str:
    """The shared server's API URL: reused when it answers, waited for when another command is
    starting it, started in the background otherwise. UserError when it cannot start."""
    home = home or server_home()
    if state := running_server(home):
        return state["url"]
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot create the local Prefect server's folder {home} ({error.strerror}). Set PREFECT_HOME "
                        "to a writable folder, or PREFECT_API_URL to a Prefect server or Prefect Cloud.") from None
    deadline = time.monotonic() + wait_seconds
    with _start_lock(home, deadline):
        state = read_state(home)
        if state and healthy(state["url"]):
            return state["url"]
        if state and alive(state["pid"]):
            log.info(f"the local Prefect server (pid {state['pid']}) is starting; waiting for it")
        else:
            state = _start(home)
            log.info(f"starting a local Prefect server in the background, shared by every fleetgen command on this "
                     f"machine: UI at {state['ui']} once up (up to {wait_seconds:.0f} s on a busy machine; log: "
                     f"{state['log']}; stop it with `python -m tasks.prefect_server stop`)")
        tries = 1
        while not healthy(state["url"]):
            if not alive(state["pid"]):
                if tries < PORT_TRIES and port_taken(Path(state["log"]), state.get("log_from", 0)):
                    state, tries = _start(home), tries + 1  # its port was taken before it bound it: another one
                    continue
                raise _cannot_start(state, "stopped while starting")
            if time.monotonic() > deadline:
                raise _cannot_start(state, f"did not answer within {wait_seconds:.0f} s")
            time.sleep(0.5)
    log.info(f"local Prefect server up: UI at {state['ui']}")
    return state["url"]


def stop_server(home: Path | None = None) -> bool:
    """Stop the shared server (its whole process group); True when one was running."""
    home = home or server_home()
    state = read_state(home)
    if not state or not alive(state["pid"]):
        return False
    try:
        os.killpg(state["pid"], signal.SIGTERM)
        for _ in range(100):
            if not alive(state["pid"]):
                break
            time.sleep(0.1)
        else:
            os.killpg(state["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command not in ("status", "stop"):
        print("usage: python -m tasks.prefect_server [status|stop]", file=sys.stderr)
        return 2
    home = server_home()
    if command == "stop":
        print("stopped the local Prefect server" if stop_server(home) else "no local Prefect server was running")
    elif state := running_server(home):
        print(f"local Prefect server up: UI at {state['ui']}, API {state['url']}, pid {state['pid']}, "
              f"log {state['log']}")
    else:
        print(f"no local Prefect server running (the next fleetgen command starts one; home {home})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
