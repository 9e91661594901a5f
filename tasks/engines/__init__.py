"""Generation engines behind one small interface: the worker hands an engine prompts and
sampling settings and gets answers back, never knowing which engine it drives. One module per
engine (`hf_static.py` today); `create_engine` picks it from the worker's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tasks.config import ModelConfig, SamplingConfig

Prompt = str | list[dict[str, str]]  # a text (one user turn) or chat messages


@dataclass
class Generation:
    text: str  # the new tokens only, never the prompt
    tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)


class Engine(Protocol):
    name: str  # recorded with every answer it makes
    device: str
    label: str  # the device's name in reports (`cpu#0` when a device holds two copies)

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig) -> list[Generation]:
        """Answer a batch of prompts; raise when the batch as a whole fails."""


def create_engine(*, engine: str, model: ModelConfig, device: str, label: str) -> Engine:
    """Load `engine` with `model` on `device`."""
    if engine == "hf-static":
        from tasks.engines.hf_static import HFStaticEngine

        return HFStaticEngine(model, device=device, label=label)
    raise ValueError(f"unknown engine {engine!r}")  # WorkerConfig admits only the engines above


def generate_splitting(engine: Engine, prompts: list[Prompt], sampling: SamplingConfig) -> list[Generation | Exception]:
    """Generate a batch; when it raises (e.g. CUDA out of memory), retry each half on its own.
    A single prompt that still fails yields its exception instead of a generation."""
    try:
        return list(engine.generate(prompts, sampling))
    except Exception as error:  # out of memory, a bad prompt, a driver error: all worth a smaller try
        if len(prompts) == 1:
            return [error]
        half = len(prompts) // 2
        return generate_splitting(engine, prompts[:half], sampling) + generate_splitting(engine, prompts[half:], sampling)
