"""The `vllm` engine: the worker starts one OpenAI-compatible server per local device (`vllm
serve` by default; `--serve-command` is a template, so `transformers serve` or any other can be
managed the same way), each with its own `CUDA_VISIBLE_DEVICES` and port (another one when its port
was taken meanwhile), waits until it is healthy, drives it through the `openai` engine, and stops
it on exit. A server dies with its worker even when the worker is killed (Linux: the parent-death
signal, set by a small launcher that then becomes the server, since `preexec_fn` is unsafe in a
process with threads), so none is left behind."""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.config import EngineConfig, ModelConfig
from tasks.engines.devices import compute_capability, dtype_name
from tasks.engines.openai_api import OpenAIEngine
from tasks.errors import UserError
from tasks.local_servers import PORT_TRIES, free_port, healthy, port_taken

# Run as `python -c LAUNCHER <worker pid> <command...>`: a SIGTERM when the worker dies, then the server itself.
LAUNCHER = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
            "os.getppid() == int(sys.argv[1]) or sys.exit('the worker is gone'); os.execvp(sys.argv[2], sys.argv[2:])")


def launched(command: list[str]) -> list[str]:
    """`command` behind the launcher that ties it to this process (Linux), else as it is."""
    return [sys.executable, "-c", LAUNCHER, str(os.getpid()), *command] if sys.platform.startswith("linux") else command


def server_env(device: str) -> dict[str, str]:
    """Settings a vLLM server needs on this device: on GPUs older than compute capability 8 (a T4)
    vLLM's default attention kernels do not run, its Triton ones do."""
    capability = compute_capability(device)
    return {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN"} if capability is not None and capability < (8, 0) else {}


class ServedEngine(OpenAIEngine):
    name = "vllm"

    def __init__(self, model: ModelConfig, *, device: str, label: str, settings: EngineConfig, context_tokens: int):
        env = {**server_env(device), **os.environ}  # what the user set wins
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
        atexit.register(self.close)
        dtype = dtype_name(model.dtype, device)
        for _ in range(PORT_TRIES):
            port = free_port()
            command = settings.serve_command.format(model=model.model, port=port, dtype=dtype, device=device,
                                                    max_model_len=context_tokens)
            self._start(command, env, port)
            if self._wait_healthy(f"http://127.0.0.1:{port}", command, settings.serve_timeout):
                break
        else:
            raise UserError(f"The server `{command}` found its port taken {PORT_TRIES} times in a row: another "
                            f"program keeps taking the ports it is given. Its last lines ({self.log}):\n{self.tail()}")
        super().__init__(api_base=f"http://127.0.0.1:{port}/v1", model=model.model, label=label, settings=settings)

    def _start(self, command: str, env: dict[str, str], port: int) -> None:
        argv = shlex.split(command)
        if not argv or shutil.which(argv[0]) is None:
            raise UserError(f"Cannot start the server `{command}`: {argv[0] if argv else 'no command'} is not "
                            "installed here (pip install vllm). Or point --serve-command at another OpenAI-compatible "
                            "server.")
        self.log = Path(tempfile.mkstemp(prefix=f"fleetgen-server-{port}-", suffix=".log")[1])
        with self.log.open("w") as output:
            self.process = subprocess.Popen(launched(argv), env=env, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _wait_healthy(self, base: str, command: str, timeout: float) -> bool:
        """True once healthy; False when it stopped because its port was taken (try another)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if port_taken(self.log):
                    return False
                self.close()
                raise UserError(f"The server `{command}` exited with code {self.process.returncode} before it was "
                                f"healthy. Its last lines ({self.log}):\n{self.tail()}")
            if healthy(base):
                return True
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
        if getattr(self, "process", None) is not None and self.process.poll() is None:  # none before the first start
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
