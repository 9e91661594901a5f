"""Engine benchmark: `python bench/engines.py [--questions N] [--hidden H] [--layers L] [--architecture A]
[--lengths gsm8k|reasoning]`.

Ratios measured side by side in one run (repeats interleaved, medians), on GSM8K questions:
  (a) `hf` (continuous batching) / `hf-static` useful tokens/s, at each in-flight count (the
      static batch the same size as the claimed batch);
  (b) the worker pipeline with `hf` (exchange, store writes, grading, on an SQLite store) / the
      raw `hf` engine on the same prompts;
  (c) the `openai` engine against a local `transformers serve` / that server driven directly
      (the `openai` client alone) with the same concurrency (`--no-server` leaves it out);
  (d) `hf-static` drawing each answer with its own seed (temperature 1, top-p 0.95) / the same
      drawing from the device's generator: the price of per-sample seeds; and how many of 8 seeded
      answers come out the same when their request is generated alone (the seed fixes the draws;
      a batch's other numerics, bfloat16 kernels on a GPU, may still change a token);
  (s) with `--compile`: `hf-static --compile` (a static cache and a compiled decode step; CUDA
      graphs on a GPU) / `hf-static`, and `hf --compile` (transformers' compiled batching steps,
      CUDA graphs on a GPU) / `hf`, the compiles done in a warm-up on the measured lengths.
Each figure is also given as a share of the memory-bandwidth bound: in flight x the device's
bandwidth (measured with a copy) / the weights' bytes, the tokens/s if every decoding step only
read the weights once at full speed. `--no-pipeline` leaves (b) out, for a GPU machine without
prefect (`bench/gpu.sh`).
Random weights never stop on their own, so every prompt gets its own length: max new tokens drawn
from the token lengths of GSM8K reference solutions (the same draw for every engine), and only
those useful tokens count (a static batch computes up to its longest). The model is a randomly
initialised Llama whose forward pass dominates (hidden and layers below), or with `--architecture`
a real configuration (Qwen2.5-1.5B or 7B) in bfloat16; speed does not depend on the weights. The
device is the first GPU when there is one (`--device`).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
import torch
from torch._dynamo.utils import counters

from bench.reasoning import reasoning_lengths
from bench.standins import ARCHITECTURES, build_model
from tasks.benchmarks import build_items, load_rows, resolve_source
from tasks.config import EngineConfig, ModelConfig, SamplingConfig, WorkerConfig
from tasks.engines import Engine, Generation, Prompt, Request, answer_all
from tasks.engines.hf_continuous import HFContinuousEngine
from tasks.engines.hf_static import HFStaticEngine
from tasks.engines.openai_api import OpenAIEngine
from tasks.prompts import render
from tasks.store.sqlite import SqliteStore
from tasks.worker.chat import item_messages
from tasks.worker.leases import LeaseKeeper


def lengths_from_gsm8k(model: HFStaticEngine, count: int, cap: int, seed: int = 0) -> list[int]:
    """Token lengths of GSM8K reference solutions, drawn at random (the same draw for every engine)."""
    rows = load_rows(resolve_source(str(Path(__file__).resolve().parents[1] / "data/gsm8k/train.jsonl"), "train"),
                     response_field="answer", limit=2000)
    lengths = [min(cap, len(model.tokenizer(str(row.response))["input_ids"])) for row in rows]
    return random.Random(seed).choices(lengths, k=count)


def useful(answers: list[Generation | Exception], lengths: list[int]) -> int:
    """Tokens up to each request's own length (what a static batch computes beyond it is waste)."""
    return sum(min(answer.tokens, length) for answer, length in zip(answers, lengths) if isinstance(answer, Generation))


def timed(run: Callable[[], list[Generation | Exception]], lengths: list[int]) -> float:
    if torch.cuda.is_available():  # `hf` sizes its cache from the GPU's free memory: give back the last run's
        torch.cuda.empty_cache()
    started = time.perf_counter()
    answers = run()
    return useful(answers, lengths) / (time.perf_counter() - started)


def same(answers: list[Generation | Exception], others: list[Generation | Exception]) -> int:
    """How many answers have the same text as the other engine's (greedy: they should, save rounding)."""
    return sum(isinstance(a, Generation) and isinstance(b, Generation) and a.text == b.text
               for a, b in zip(answers, others))


def requests_for(prompts: list[str], lengths: list[int], seeded: bool = False) -> list[Request]:
    return [Request(key=str(n), prompt=prompt, max_new_tokens=length, seed=n if seeded else None)
            for n, (prompt, length) in enumerate(zip(prompts, lengths))]


def pipeline(engine: Engine, rows: list[Any], lengths: list[int], sampling: SamplingConfig, *,
             batch_size: int) -> float:
    """The worker's device loop with the engine on a fresh SQLite store: useful tokens/s."""
    from tasks.worker.loop import work_on_run  # imports prefect, which a bare GPU machine may lack (--no-pipeline)

    config = WorkerConfig(run="bench", worker="bench", batch_size=batch_size, sampling=sampling, devices="cpu")
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "bench.db")
        store.seed("bench", build_items(rows, 1))
        length_of = {item.id: length for item, length in zip(store.items("bench"), lengths)}
        started = time.perf_counter()
        with LeaseKeeper(store, config.lease_seconds) as keeper:
            work_on_run(store=store, engine=engine, config=config, keeper=keeper, request=lambda item: Request(
                key=item.id, prompt=item_messages(item, "step_by_step"), max_new_tokens=length_of[item.id]))
        seconds = time.perf_counter() - started
        tokens = sum(min(item.result.tokens or 0, length_of[item.id]) for item in store.items("bench") if item.result)
    return tokens / seconds


def copy_bandwidth(device: str, megabytes: int = 1024) -> float:
    """The device memory's bandwidth as a copy sees it: bytes read and written per second, best of 5."""
    source = torch.ones(megabytes << 20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    settle = torch.cuda.synchronize if device.startswith("cuda") else lambda device: None
    best = 0.0
    for _ in range(6):  # the first one warms up
        settle(device)
        started = time.perf_counter()
        target.copy_(source)
        settle(device)
        best = max(best, 2 * source.numel() / (time.perf_counter() - started))
    return best


def serve(model: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["transformers", "serve", str(model), "--port", str(port), "--device", "cpu",
                                "--host", "127.0.0.1"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(360):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("transformers serve did not start")


def direct(api: str, model: str, prompts: Sequence[Prompt], lengths: list[int], concurrency: int) -> float:
    """The server driven directly with the `openai` client alone, `concurrency` requests at a time;
    completion tokens/s."""
    import openai

    client = openai.OpenAI(base_url=api, api_key="none", timeout=600)  # its default retries, as a user has

    def ask(pair: tuple[Prompt, int]) -> int:
        messages: Any = [{"role": "user", "content": pair[0]}] if isinstance(pair[0], str) else pair[0]
        response = client.chat.completions.create(model=model, messages=messages, max_tokens=pair[1], temperature=0)
        return response.usage.completion_tokens if response.usage else 0

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(ask, zip(prompts, lengths)))
    client.close()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--in-flight", default="8,16,32", help="in-flight counts to compare (default: 8,16,32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the longest drawn length (default: 256)")
    parser.add_argument("--server-questions", type=int, default=16, help="(c) prompts (default: 16)")
    parser.add_argument("--no-server", action="store_true", help="leave (c) out (no `transformers serve`)")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), help="a real configuration instead of the "
                                                                             "small Llama")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also measure hf-static --compile and hf --compile (s)")
    parser.add_argument("--no-pipeline", action="store_true", help="leave (b) out (the worker's loop needs prefect)")
    parser.add_argument("--lengths", choices=("gsm8k", "reasoning"), default="gsm8k",
                        help="new tokens drawn from GSM8K solutions, or reasoning traces' long tail scaled to "
                             "--max-new-tokens (bench/reasoning.py)")
    args = parser.parse_args()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    build_model(folder, chat=True, hidden=args.hidden, layers=args.layers, architecture=args.architecture)
    model = ModelConfig(model=str(folder))
    static = HFStaticEngine(model, device=args.device)
    rows = load_rows(resolve_source("gsm8k", "test"), limit=args.questions)
    prompts = [render("step_by_step", question=row.question) for row in rows]
    lengths = (reasoning_lengths(len(prompts), cap=args.max_new_tokens) if args.lengths == "reasoning"
               else lengths_from_gsm8k(static, len(prompts), args.max_new_tokens))
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    hot = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.95)
    drawn_from = {"gsm8k": "GSM8K solutions", "reasoning": "reasoning traces' long tail (bench/reasoning.py)"}
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"cpu ({torch.get_num_threads()} threads)"
    shape = f"random {args.architecture} (bfloat16)" if args.architecture else \
        f"random Llama hidden {args.hidden}, {args.layers} layers"
    print(f"{where}, {shape}, "
          f"{len(prompts)} GSM8K questions, new tokens drawn from {drawn_from[args.lengths]} (mean "
          f"{statistics.mean(lengths):.0f}, max {max(lengths)}), greedy, {args.repeats} interleaved repeats (medians):")
    weights = sum(parameter.numel() * parameter.element_size() for parameter in static.model.parameters())
    bandwidth = copy_bandwidth(args.device)
    print(f"  memory-bandwidth bound: in flight x {bandwidth / 1e9:,.0f} GB/s (a copy's bytes read and written, "
          f"measured here) / {weights / 1e9:.2f} GB of weights (each decoding step reads them all once)")
    for in_flight in map(int, args.in_flight.split(",")):
        static.batch_size = in_flight
        continuous = HFContinuousEngine(model, device=args.device,
                                        settings=EngineConfig(name="hf", max_in_flight=in_flight))
        engines: dict[str, Engine] = {"hf-static": static, "hf": continuous}
        if args.compile:
            engines["hf-static --compile"] = HFStaticEngine(model, device=args.device, batch_size=in_flight,
                                                            compiled=True)
            engines["hf --compile"] = HFContinuousEngine(model, device=args.device, settings=EngineConfig(
                name="hf", max_in_flight=in_flight, compile=True))
        # warm-up on the measured lengths (a GPU's first kernels at a shape are slow; compiles happen here)
        first, warm_up = {}, {}
        for name, warming in engines.items():
            started = time.perf_counter()
            first[name] = answer_all(warming, requests_for(prompts, lengths), sampling)
            warm_up[name] = time.perf_counter() - started
        print(f"  {in_flight:>2} in flight, warm-up (compiles included): "
              + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in warm_up.items()), flush=True)
        graphs = counters["stats"]["unique_graphs"]
        rates: dict[str, list[float]] = {name: [] for name in [*engines, "pipeline", "seeded", "generator"]}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                rates[name].append(timed(lambda: answer_all(engine, requests_for(prompts, lengths), sampling),
                                         lengths))
            if not args.no_pipeline:
                rates["pipeline"].append(pipeline(continuous, rows, lengths, sampling, batch_size=in_flight))
            for name, with_seeds in (("seeded", True), ("generator", False)):
                rates[name].append(timed(lambda: answer_all(static, requests_for(prompts, lengths, with_seeds), hot),
                                         lengths))
        median = {name: statistics.median(values) for name, values in rates.items() if values}
        bound = in_flight * bandwidth / weights
        ratios = [f"(a) hf / hf-static = {median['hf'] / median['hf-static']:.2f}"]
        if "pipeline" in median:
            ratios.append(f"(b) worker pipeline with hf {median['pipeline']:.1f} / raw hf = "
                          f"{median['pipeline'] / median['hf']:.2f}")
        ratios.append(f"(d) hf-static seeded {median['seeded']:.1f} / from the generator {median['generator']:.1f} = "
                      f"{median['seeded'] / median['generator']:.2f}")
        if args.compile:
            ratios.append(f"(s) hf-static --compile / hf-static = "
                          f"{median['hf-static --compile'] / median['hf-static']:.2f}, hf --compile / hf = "
                          f"{median['hf --compile'] / median['hf']:.2f} "
                          f"({counters['stats']['unique_graphs'] - graphs} graphs compiled in the repeats); answers "
                          "the same as without --compile: hf-static "
                          f"{same(first['hf-static --compile'], first['hf-static'])}, hf "
                          f"{same(first['hf --compile'], first['hf'])} of {len(prompts)}")
        print(f"  {in_flight:>2} in flight, useful tokens/s (share of the bound, {bound:,.0f}): " + ", ".join(
            f"{name} {median[name]:,.1f} ({median[name] / bound:.1%})" for name in [*engines, "pipeline"]
            if name in median))
        print("      " + "; ".join(ratios))
    seeded = requests_for(prompts, lengths, seeded=True)
    batched = answer_all(static, seeded, hot)[:8]
    alone = [answer_all(static, [request], hot)[0] for request in seeded[:8]]
    print(f"  (d) seeded answers the same alone as in a batch of {static.batch_size}: {same(batched, alone)} of "
          f"{len(alone)}")
    if args.no_server:
        return
    process, api = serve(folder)
    try:
        count, concurrency = args.server_questions, 4
        engine = OpenAIEngine(api_base=api, model=str(folder), label="serve", settings=EngineConfig(
            name="openai", api_base=api, concurrency=concurrency))
        short = [min(length, 64) for length in lengths[:count]]
        through, plain = [], []
        for _ in range(args.repeats):
            through.append(timed(lambda: answer_all(engine, requests_for(prompts[:count], short), sampling), short))
            plain.append(direct(api, str(folder), prompts[:count], short, concurrency))
        print(f"  (c) openai engine {statistics.median(through):.1f} / the server driven directly "
              f"{statistics.median(plain):.1f} completion tokens/s = "
              f"{statistics.median(through) / statistics.median(plain):.2f} "
              f"(transformers serve, {concurrency} at a time, "
              f"{count} prompts)")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
