"""The `hf-static` engine: `model.generate` on static batches, length-sorted (left padding; a
batch runs until its longest answer ends). A batch that fails (CUDA out of memory) is retried in
halves; a prompt that still fails alone gives its error back."""

from __future__ import annotations

import time
from typing import Iterator

from tasks.config import ModelConfig, SamplingConfig
from tasks.engines import Abandoned, Feeder, Finished, Generation, Request, share_time
from tasks.engines.hf_model import HFModel, warn_if_compiled_on_cpu


class HFStaticEngine(HFModel):
    name = "hf-static"

    def __init__(self, config: ModelConfig, *, device: str, label: str | None = None, batch_size: int = 16,
                 compiled: bool = False):
        super().__init__(config, device=device, label=label)
        self.batch_size = batch_size
        self.compiled_batch = batch_size if compiled else None
        warn_if_compiled_on_cpu(compiled=compiled, label=self.label, device=device, measured="0.24-0.33x")

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        return run_static(self, feeder, sampling, self.batch_size)

    def close(self) -> None:
        """Nothing to give back: the model goes with the process."""


def run_static(model: HFModel, feeder: Feeder, sampling: SamplingConfig, batch_size: int) -> Iterator[list[Finished]]:
    """Take a batch, generate it (length-sorted), yield it; until the feeder is done."""
    while (requests := feeder.take(batch_size, wait=True)) is not None:
        # each prompt templated and encoded once, the batch in one call
        tokens = dict(zip([request.key for request in requests],
                          model.encode_all([request.prompt for request in requests], sampling.thinking)))
        unreadable: list[Finished] = [(request, error) for request in requests
                                      if (error := model.too_long(tokens[request.key]))]
        if unreadable:
            yield unreadable
            rejected = {request.key for request, _ in unreadable}
            requests = [request for request in requests if request.key not in rejected]
        if not requests:
            continue
        requests = sorted(requests, key=lambda request: len(tokens[request.key]))
        started = time.perf_counter()
        outputs = generate_splitting(model, requests, sampling, tokens)
        yield share_time(list(zip(requests, outputs)), time.perf_counter() - started)


def generate_splitting(model: HFModel, requests: list[Request], sampling: SamplingConfig,
                       tokens: dict[str, list[int]], pad_to: int | None = None) -> list[Generation | Exception]:
    """Generate a batch; when it raises (e.g. CUDA out of memory), retry each half on its own
    (each request keeps its own length, stop texts and seed; with --compile, each half padded to
    half the rows, so it needs less memory). A single request that still fails yields its
    exception instead of a generation."""
    pad_to = pad_to or model.compiled_batch
    try:
        return list(model.generate([request.prompt for request in requests], sampling,
                                   limits=[request.max_new_tokens or sampling.max_new_tokens for request in requests],
                                   stop=tuple(sorted({text for request in requests for text in request.stop})),
                                   seeds=[request.seed for request in requests], abandoned=requests[0].abandoned,
                                   tokens=[tokens[request.key] for request in requests], pad_to=pad_to))
    except Abandoned as error:  # the worker stopped: no half is worth a try
        return [error] * len(requests)
    except Exception as error:  # out of memory, a bad prompt, a driver error: all worth a smaller try
        if len(requests) == 1:
            return [error]
        half, half_rows = len(requests) // 2, -(-pad_to // 2) if pad_to else None
        return (generate_splitting(model, requests[:half], sampling, tokens, half_rows)
                + generate_splitting(model, requests[half:], sampling, tokens, half_rows))
