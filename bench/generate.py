"""Worker benchmark: `python bench/generate.py [--questions N] [--batch-size B] [--max-new-tokens T]`.

Three ways to answer the same GSM8K prompts with the same model and greedy settings, measured
alternately in one run (repeats interleaved, medians reported), printed as ratios:
  raw       tokenizer + `model.generate` over the prompts in batches: the ceiling;
  pipeline  the worker's device loop on an SQLite store: length-sorted batches, grading, the
            next claim and the last batch's write done in one background call, heartbeats;
  original  a re-creation of August-murr/ScalableGen's loop on the same store: per batch a
            pending count, a claim, generation of unsorted static batches, a second LLM pass
            with the one-shot extraction prompt over every response (half-size batches, 10 new
            tokens), then the write, all in the device's thread.
Also the device's busy fraction in the pipeline (time inside generation / wall time).
`--store-latency-ms` adds a network round trip to every store call (Kaggle to Atlas: ~50-150).
The model is random (speed does not depend on the weights): a small Llama built locally, or with
`--architecture` a real configuration (Qwen2.5-1.5B or 7B) in bfloat16. The first GPU if any.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.standins import ARCHITECTURES, build_model
from tasks.benchmarks import Row, build_items, load_rows, resolve_source
from tasks.config import ModelConfig, SamplingConfig, WorkerConfig
from tasks.engines.hf_static import HFStaticEngine
from tasks.grading import grade, symbolic
from tasks.prompts import render
from tasks.store.counts import summarize
from tasks.store.models import Result
from tasks.store.sqlite import SqliteStore
from tasks.worker.chat import item_messages
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import work_on_run


def batches(values: list, size: int) -> list[list]:
    return [values[start:start + size] for start in range(0, len(values), size)]


def raw(model: HFStaticEngine, prompts: list[str], batch_size: int, sampling: SamplingConfig) -> tuple[int, float]:
    """Generated tokens and seconds of plain `model.generate` calls."""
    tokens, started = 0, time.perf_counter()
    for chunk in batches(prompts, batch_size):
        texts = [model.prompt_text(prompt) for prompt in chunk]
        encoded = model.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not model.chat)
        with torch.inference_mode():
            output = model.model.generate(**encoded.to(model.device), max_new_tokens=sampling.max_new_tokens,
                                          do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        tokens += (output.shape[1] - encoded["input_ids"].shape[1]) * len(chunk)
    return tokens, time.perf_counter() - started


class RemoteStore:
    """A store whose every call first waits one network round trip."""

    def __init__(self, store: SqliteStore, latency: float):
        self._store, self._latency = store, latency

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._store, name)

        def remote(*args: Any, **kwargs: Any) -> Any:
            time.sleep(self._latency)
            return call(*args, **kwargs)

        return remote


def fresh_store(folder: str, rows: list[Row], latency: float) -> Any:
    store = SqliteStore(Path(folder) / "bench.db")
    store.seed("bench", build_items(rows, 1))
    return RemoteStore(store, latency)


def original(model: HFStaticEngine, rows: list[Row], batch_size: int, sampling: SamplingConfig,
             latency: float) -> tuple[int, float]:
    """Answer tokens and seconds of the original loop."""
    extract = SamplingConfig(max_new_tokens=10)
    with tempfile.TemporaryDirectory() as folder:
        store, tokens, started = fresh_store(folder, rows, latency), 0, time.perf_counter()
        while summarize(store.counts("bench"))["pending"]:
            claim = store.claim("bench", "original", batch_size, 600)
            answers = model.generate([item_messages(item, "step_by_step") for item in claim.items], sampling)
            prompts = [render("extract", response=f"{item.question}\n{answer.text}")
                       for item, answer in zip(claim.items, answers)]
            extracted = [out for chunk in batches(prompts, max(1, batch_size // 2))
                         for out in model.generate(chunk, extract)]
            graded = {item.id: (answer.text, grade(out.text, item.reference))
                      for item, answer, out in zip(claim.items, answers, extracted)}
            store.complete(claim, {id_: Result(response=response, predicted=g.predicted, correct=g.correct)
                                   for id_, (response, g) in graded.items()})
            tokens += sum(answer.tokens for answer in answers)
        return tokens, time.perf_counter() - started


def pipeline(model: HFStaticEngine, rows: list[Row], batch_size: int, sampling: SamplingConfig,
             latency: float) -> tuple[int, float, float]:
    """Answer tokens, seconds and busy fraction of the worker's device loop."""
    config = WorkerConfig(run="bench", worker="bench", batch_size=batch_size, sampling=sampling, devices="cpu")
    model.batch_size = batch_size
    with tempfile.TemporaryDirectory() as folder:
        store = fresh_store(folder, rows, latency)
        started = time.perf_counter()
        with LeaseKeeper(store, config.lease_seconds) as keeper:
            reports = work_on_run(store=store, engine=model, config=config, keeper=keeper)
        wall = time.perf_counter() - started
        assert sum(report.done for report in reports) == len(rows)
    return sum(r.tokens for r in reports), wall, sum(r.seconds for r in reports) / wall


def start_grader() -> None:
    """The grader's processes started and idle, as a worker's are once its models have loaded
    (it starts them first): their start-up is not measured, as the model's loading is not."""
    symbolic.start()
    children = psutil.Process().children
    while not children() or any(child.cpu_percent(0.5) > 1 for child in children()):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random Llama (default: 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store-latency-ms", type=float, default=0.0, help="added to every store call (default: 0)")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), help="a real configuration instead of the "
                                                                             "small Llama")
    args = parser.parse_args()
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    rows = load_rows(resolve_source("gsm8k", "test"), limit=args.questions)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as folder:
        built = build_model(Path(folder), chat=True, hidden=args.hidden, architecture=args.architecture)
        model = HFStaticEngine(ModelConfig(model=str(built)), device=device)
    prompts = [render("step_by_step", question=row.question) for row in rows]
    start_grader()
    model.generate(prompts[:2], sampling)  # warm-up
    rates: dict[str, list[float]] = {"raw": [], "pipeline": [], "original": []}
    busy = []
    latency = args.store_latency_ms / 1000
    for _ in range(args.repeats):
        tokens, seconds = raw(model, prompts, args.batch_size, sampling)
        rates["raw"].append(tokens / seconds)
        tokens, seconds, fraction = pipeline(model, rows, args.batch_size, sampling, latency)
        rates["pipeline"].append(tokens / seconds)
        busy.append(fraction)
        tokens, seconds = original(model, rows, args.batch_size, sampling, latency)
        rates["original"].append(tokens / seconds)
    median = {name: statistics.median(values) for name, values in rates.items()}
    shape = f"random {args.architecture} (bfloat16)" if args.architecture else f"random Llama hidden {args.hidden}"
    print(f"{device}, {shape}, {args.questions} GSM8K questions, batch {args.batch_size}, "
          f"{args.max_new_tokens} new tokens, greedy, store latency {args.store_latency_ms:g} ms, "
          f"{args.repeats} interleaved repeats (medians):")
    for name, rate in median.items():
        print(f"  {name:<9} {rate:8.1f} answer tokens/s")
    print(f"(a) pipeline / raw model.generate  = {median['pipeline'] / median['raw']:.3f}")
    print(f"(b) pipeline / original loop       = {median['pipeline'] / median['original']:.2f}")
    print(f"(c) device busy fraction (pipeline) = {statistics.median(busy):.3f}")


if __name__ == "__main__":
    main()
