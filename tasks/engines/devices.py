"""Which engine the worker runs (`--engine auto`) and which devices it loads model copies on."""

from __future__ import annotations

import importlib.util
import os

from tasks.config import DEFAULT_SERVE_COMMAND, EngineConfig
from tasks.errors import UserError


def cpu_cores() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_devices(devices: str) -> list[str]:
    """`auto` (every visible GPU, else cpu) or a comma list such as `cuda:0,cuda:1` or `cpu,cpu`
    (its syntax checked by WorkerConfig); UserError for a GPU this machine does not have."""
    import torch

    gpus = torch.cuda.device_count()
    if devices == "auto":
        return [f"cuda:{index}" for index in range(gpus)] or ["cpu"]
    names = devices.split(",")
    for name in names:
        if name.startswith("cuda:") and int(name[5:]) >= gpus:
            raise UserError(f"--devices names {name}, but this machine has {gpus} visible GPU(s). "
                            "Use --devices auto, or --devices cpu to run on the processor.")
    return names


def choose_engine(engine: EngineConfig, *, devices: str, static_only: bool = False) -> tuple[EngineConfig, str]:
    """`--engine auto` made concrete, with the reason in one line: `openai` for --api-base, `vllm`
    for --serve-command, or where vLLM is installed and the devices are CUDA GPUs, else `hf-static`
    (also whenever the run needs it: `static_only`). Any other engine stays as it was asked."""
    if engine.name != "auto":
        return engine, f"engine {engine.name}"
    import torch

    named = [] if devices == "auto" else devices.split(",")
    gpus = torch.cuda.is_available() and all(name.startswith("cuda:") for name in named)
    if engine.api_base:
        name, why = "openai", "--api-base given"
    elif engine.serve_command != DEFAULT_SERVE_COMMAND:
        name, why = "vllm", "--serve-command given"
    elif static_only:
        name, why = "hf-static", "--extract llm runs on hf-static"
    elif not gpus:
        name, why = "hf-static", "no CUDA GPU among the devices"
    elif importlib.util.find_spec("vllm") is None:
        name, why = "hf-static", "vLLM is not installed here (pip install vllm: the fastest engine on a GPU)"
    else:
        name, why = "vllm", "vLLM is installed and the devices are CUDA GPUs"
    if engine.compile and name != "hf-static":
        why += "; --compile is for the HF engines, so it does not apply"
    return engine.model_copy(update={"name": name, "compile": engine.compile and name == "hf-static"}), \
        f"engine {name} (--engine auto: {why})"


def compute_capability(device: str) -> tuple[int, int] | None:
    """A CUDA device's compute capability (a T4: 7.5, an H100: 9.0); None for a CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_capability(int(device.partition(":")[2] or 0))


def dtype_name(dtype: str, device: str) -> str:
    """The weights' dtype: as asked, else bfloat16 on GPUs of compute capability 8 and up, float16
    on older ones (a T4 has no bfloat16 kernels), float32 on a CPU."""
    if dtype != "auto":
        return dtype
    capability = compute_capability(device)
    if capability is None:
        return "float32"
    return "bfloat16" if capability >= (8, 0) else "float16"


def device_labels(devices: list[str]) -> list[str]:
    """Unique names for reports: `cpu,cpu` -> `cpu#0`, `cpu#1`; distinct devices keep their names."""
    return [f"{name}#{index}" if devices.count(name) > 1 else name for index, name in enumerate(devices)]


def engine_devices(engine: EngineConfig, devices: str) -> list[tuple[str, str]]:
    """(device, label) for every engine copy: an endpoint each for `openai`, else a local device."""
    if engine.name == "openai":
        from tasks.engines.openai_api import endpoint_label

        urls = engine.endpoints()
        return list(zip(urls, device_labels([endpoint_label(url) for url in urls])))
    names = resolve_devices(devices)
    return list(zip(names, device_labels(names)))


def worker_devices(engine: EngineConfig, devices: str) -> list[tuple[str, str]]:
    """`engine_devices` for the worker, which runs a copy on each: `hf --compile` takes one."""
    copies = engine_devices(engine, devices)
    if engine.name == "hf" and engine.compile and len(copies) > 1:
        raise UserError(
            f"--engine hf --compile runs on one device per worker, and --devices gives {len(copies)} "
            f"({', '.join(device for device, _ in copies)}): transformers compiles its batching steps on threads of "
            "its own, and while one compiles torch tells every thread that it is compiling, which breaks the other "
            "copies' steps. Start one worker per device (--devices cuda:0, and another with --devices cuda:1), or use "
            "--engine hf-static --compile, which compiles one device at a time.")
    return copies


def share_cores(devices: list[tuple[str, str]], cpu_threads: int | None) -> str | None:
    """Torch threads for CPU model copies: the cores shared among them (they run at once, each op
    on up to this many threads), so copies never outnumber the cores; says what it set (None: no
    CPU copy)."""
    import torch

    copies, cores = sum(device == "cpu" for device, _ in devices), cpu_cores()
    if not copies:
        return None
    torch.set_num_threads(cpu_threads or max(1, cores // copies))
    return f"CPU model copies: {copies}, torch threads: {torch.get_num_threads()} ({cores} cores)"
