"""The `vllm` engine: the worker starts one OpenAI-compatible server per local device (`vllm
serve` by default; `--serve-command` is a template, so `transformers serve` or any other can be
managed the same way), each with its own `CUDA_VISIBLE_DEVICES` and port, waits until it is
healthy, drives it through the `openai` engine, and stops it on exit. A server dies with its
worker even when the worker is killed (Linux: the parent-death signal), so none is left behind."""

from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tasks.config import EngineConfig, ModelConfig
from tasks.engines.openai_api import OpenAIEngine
from tasks.errors import UserError

PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process, before it starts: a SIGTERM when the worker dies, however it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServedEngine(OpenAIEngine):
    name = "vllm"

    def __init__(self, model: ModelConfig, *, device: str, label: str, settings: EngineConfig):
        port = _free_port()
        command = settings.serve_command.format(model=model.model, port=port, dtype=model.dtype, device=device)
        env = {**os.environ}
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
        self.log = Path(tempfile.mkstemp(prefix=f"fleetgen-server-{port}-", suffix=".log")[1])
        try:
            with self.log.open("w") as output:
                self.process = subprocess.Popen(shlex.split(command), env=env, stdout=output, stderr=subprocess.STDOUT,
                                                start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as error:
            raise UserError(f"Cannot start the server `{command}` ({error}). Is it installed (pip install vllm)? "
                            "Or point --serve-command at another OpenAI-compatible server.") from error
        atexit.register(self.close)
        self._wait_healthy(f"http://127.0.0.1:{port}", command, settings.serve_timeout)
        super().__init__(api_base=f"http://127.0.0.1:{port}/v1", model=model.model, label=label, settings=settings)

    def _wait_healthy(self, base: str, command: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.close()
                raise UserError(f"The server `{command}` exited with code {self.process.returncode} before it was "
                                f"healthy. Its last lines ({self.log}):\n{self.tail()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.close()
        raise UserError(f"The server `{command}` was not healthy within {timeout:.0f} s (raise --serve-timeout for a "
                        f"big model). Its last lines ({self.log}):\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Stop the server and everything it started (its process group): SIGTERM, then SIGKILL."""
        if getattr(self, "client", None) is not None:
            super().close()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
