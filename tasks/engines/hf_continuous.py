"""The `hf` engine: transformers' own continuous batching (`init_continuous_batching`, paged
attention). Requests enter as they are claimed and leave as each sequence ends, so one long
answer never holds a batch; up to `--max-in-flight` are generated at once (8 on a CPU, 64 on a
GPU). It does not honour `repetition_penalty` (transformers drops it with a warning): asked for
one, the worker uses `hf-static` instead (compiled with --compile) and says so. Nor does it take
a seed per request: it samples from one generator, seeded at random when it starts (a fixed seed
would give every worker of a fleet the same stream), so its answers carry no seed to draw them
again with. On a CPU its paged cache is sized here (it would otherwise take 60% of the machine's
memory)."""

from __future__ import annotations

import logging
import secrets
from typing import Any, Iterator

from tasks.config import EngineConfig, ModelConfig, SamplingConfig
from tasks.engines import Abandoned, Feeder, Finished, Request, keep_in_flight
from tasks.engines.hf_model import HFModel, warn_if_compiled_on_cpu
from tasks.engines.hf_static import run_static

log = logging.getLogger("fleetgen")
DEFAULT_IN_FLIGHT = {"cpu": 8, "cuda": 64}  # bench/engines.py: CPU the best of 8, 16, 32; H100 64 beat 32
PAGE_SIZE = 64
PROMPT_TOKENS = 1024  # the CPU cache holds this much prompt per request (a longer one waits for room)


class HFContinuousEngine(HFModel):
    name = "hf"

    def __init__(self, config: ModelConfig, *, device: str, label: str | None = None, settings: EngineConfig):
        super().__init__(config, device=device, label=label)
        self.max_in_flight = settings.max_in_flight or DEFAULT_IN_FLIGHT["cuda" if device.startswith("cuda") else "cpu"]
        # --compile: its batching steps, and the static batches of its hf-static fallback, compiled
        self.compiled_batch = self.max_in_flight if settings.compile else None
        warn_if_compiled_on_cpu(compiled=settings.compile, label=self.label, device=device, measured="0.26-0.29x")

    def _cache_config(self, sampling: SamplingConfig) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        seed = secrets.randbits(31)  # this device's own stream (transformers seeds torch's generators with it)
        on_gpu = self.device.startswith("cuda")
        # --compile: transformers' own compile settings for its batching steps (level 1: mode "default",
        # dynamic shapes), and on a GPU its CUDA graphs, which it leaves off with sdpa's attention masks
        compiling = {"default_compile_level": 1, "use_cuda_graph": on_gpu} if self.compiled_batch else {}
        if on_gpu:
            return ContinuousBatchingConfig(max_requests_per_batch=self.max_in_flight, seed=seed, **compiling)
        longest = PROMPT_TOKENS + sampling.max_new_tokens  # a request's prompt and answer, in tokens
        return ContinuousBatchingConfig(page_size=PAGE_SIZE, max_requests_per_batch=self.max_in_flight,
                                        num_blocks=self.max_in_flight * (longest // PAGE_SIZE + 1),
                                        max_batch_tokens=PROMPT_TOKENS + self.max_in_flight, seed=seed, **compiling)

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        if sampling.repetition_penalty != 1.0:
            log.warning(f"{self.label}: --engine hf does not honour --repetition-penalty, so this run uses hf-static")
            yield from run_static(self, feeder, sampling, self.max_in_flight)
            return
        manager = self.model.init_continuous_batching(generation_config=self.generation_config(sampling),
                                                      continuous_batching_config=self._cache_config(sampling))
        manager.start()
        in_flight: dict[str, Request] = {}

        def start(request: Request) -> Finished | None:
            tokens = self.encode(request.prompt, sampling.thinking)
            if error := self.too_long(tokens):
                return request, error
            in_flight[request.key] = request
            manager.add_request(tokens, request_id=request.key,
                                max_new_tokens=request.max_new_tokens or sampling.max_new_tokens)
            return None

        try:
            yield from keep_in_flight(feeder, capacity=self.max_in_flight, in_flight=in_flight.__len__, start=start,
                                      collect=lambda room: self._collect(manager, in_flight, sampling))
        finally:
            manager.stop(block=True)

    def _collect(self, manager: Any, in_flight: dict[str, Request], sampling: SamplingConfig) -> list[Finished]:
        """The requests that ended since the last look (waiting briefly for the first one); all of
        them, failed, when transformers' batching thread has died (they would never end); those the
        worker gave back (its stop's grace is over), cancelled, so the device stops at once."""
        if in_flight and not manager.is_running():
            error = RuntimeError(f"continuous batching stopped: {manager.background_thread_status.fatal_error}")
            failed: list[Finished] = [(request, error) for request in in_flight.values()]
            in_flight.clear()
            return failed
        group: list[Finished] = []
        for key in [key for key, request in in_flight.items() if request.abandoned()]:
            manager.cancel_request(key)
            group.append((in_flight.pop(key), Abandoned()))
        timeout = 0.05
        while in_flight and (output := manager.get_result(timeout=timeout)) is not None:
            timeout = 0.0
            if not output.is_finished() or output.request_id not in in_flight:
                continue
            request = in_flight.pop(output.request_id)
            answer = (RuntimeError(output.error) if output.error
                      else self.answer(output.generated_tokens, sampling.thinking_marker))
            group.append((request, answer))
        return group

    def close(self) -> None:
        """Nothing to give back: each run stops its manager."""
