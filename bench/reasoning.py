"""Reasoning-length figures: `python bench/reasoning.py [--slots 16] [--tokens-per-second 20]`.

Answer lengths: a lognormal with median 4,000 and p90 12,000 tokens, capped at 16,384 (the
issue's shape: OpenR1-Math's traces average about 6,000 tokens, OpenMathReasoning allowed
16,384; the cap cuts this one's mean to about 5,500). Both figures are computed from the drawn
lengths, not timed (`bench/engines.py --lengths reasoning` times the engines on this shape):
  (1) useful-token share of decode steps: static batches of B claimed answers (each runs until
      its longest ends; sorting by prompt length does not help answers of unknown length) against
      continuous batching with B slots (a slot takes the next answer the step its own ends);
  (2) work lost when a session ends, one device with B slots at R tokens/s per answer: tokens
      generated twice (started over by the next worker) / tokens kept, without checkpoints and,
      with them, at SIGKILL (what was generated since the last checkpoint, every
      --checkpoint-seconds, is lost). With them at SIGTERM none is: the grace period's checkpoint
      keeps every answer in flight, and the next worker reads it as its prompt (prefill, the
      share printed, instead of generating it again);
  (3) what streaming (checkpoints need it) costs the worker: CPU microseconds per token to read a
      streamed answer through the `openai` engine, against the `openai` client's typed chunks and
      a whole answer, all served from memory (httpx's mock transport) so the server is not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from typing import Any, Callable

MEDIAN, P90, CAP = 4000, 12000, 16384
Z90 = 1.2816  # the standard normal's 90th percentile


def reasoning_lengths(count: int, *, cap: int = CAP, seed: int = 0) -> list[int]:
    """Answer lengths in tokens, long-tailed as reasoning traces are (see the module), scaled so the
    cap is `cap` (a CPU benchmark keeps the shape at a length it can run)."""
    draw = random.Random(seed)
    sigma = math.log(P90 / MEDIAN) / Z90
    return [max(1, round(min(CAP, draw.lognormvariate(math.log(MEDIAN), sigma)) * cap / CAP)) for _ in range(count)]


def static_share(lengths: list[int], batch: int) -> float:
    """Useful tokens / the steps × rows static batches compute (each batch runs to its longest)."""
    batches = [lengths[start:start + batch] for start in range(0, len(lengths), batch)]
    return sum(lengths) / sum(len(rows) * max(rows) for rows in batches)


def continuous_share(lengths: list[int], slots: int) -> float:
    """Useful tokens / the steps × slots continuous batching takes (idle slots count at the end)."""
    ends = [0] * slots
    for length in lengths:  # each answer goes to the slot that frees first
        ends[ends.index(min(ends))] += length
    return sum(lengths) / (max(ends) * slots)


def session_loss(*, hours: float, slots: int, rate: float, checkpoint_seconds: float,
                 seed: int = 0) -> dict[str, float]:
    """Tokens generated twice / tokens kept when a session ends after `hours`: without checkpoints
    (also the share a SIGTERM's checkpoints make the next worker re-read as prompt), and with them at
    SIGKILL (every `checkpoint_seconds`, of answers that ran that long, as the worker takes them)."""
    draw, end = random.Random(seed), hours * 3600
    kept = lost_plain = lost_killed = 0.0
    for _ in range(slots):
        started = 0.0
        while True:
            length = reasoning_lengths(1, seed=draw.randrange(2**31))[0]
            if started + length / rate > end:
                break
            kept, started = kept + length, started + length / rate
        in_flight = (end - started) * rate  # the answer being generated when the session ends
        ticks = math.floor(end / checkpoint_seconds) * checkpoint_seconds  # the last checkpoint taken
        last = (ticks - started) * rate if ticks - started >= checkpoint_seconds else 0.0
        kept += in_flight
        lost_plain += in_flight
        lost_killed += in_flight - last
    return {"none": lost_plain / kept, "sigkill": lost_killed / kept}


def streaming_cost(tokens: int = 2000, repeats: int = 5) -> dict[str, float]:
    """CPU microseconds per token of reading one answer of `tokens` pieces (see the module, (3))."""
    import httpx
    import openai

    from tasks.config import SamplingConfig
    from tasks.engines import Request
    from tasks.engines.openai_api import OpenAIEngine

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta else []
        return "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                      "choices": choices, "usage": usage}) + "\n\n"

    usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
    stream = ("".join(chunk({"content": " step"}) for _ in range(tokens)) + chunk({"content": ""}, "stop")
              + chunk({}, usage=usage) + "data: [DONE]\n\n").encode()
    whole = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": usage,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": " step" * tokens}}]}).encode()

    def serve(request: httpx.Request) -> httpx.Response:
        streamed = json.loads(request.content).get("stream")
        return httpx.Response(200, content=stream if streamed else whole,
                              headers={"content-type": "text/event-stream" if streamed else "application/json"})

    client = openai.OpenAI(base_url="http://memory/v1", api_key="none",
                           http_client=httpx.Client(transport=httpx.MockTransport(serve)))  # type: ignore[arg-type]
    engine = OpenAIEngine.__new__(OpenAIEngine)  # no server to check: the client above answers from memory
    engine.client, engine.model_name = client, "m"
    messages = [{"role": "user", "content": "q"}]
    ours = Request(key="q", prompt="q", on_progress=lambda read: None)

    def typed() -> None:
        for _ in client.chat.completions.create(model="m", messages=messages, stream=True,  # type: ignore[call-overload]
                                                stream_options={"include_usage": True}):
            pass

    sampling = SamplingConfig(max_new_tokens=tokens)
    ways: dict[str, Callable[[], object]] = {
        "engine, streamed": lambda: engine._ask(ours, sampling), "openai client's typed chunks": typed,
        "engine, whole answer": lambda: engine._ask(Request(key="q", prompt="q"), sampling)}
    spent = {name: 0.0 for name in ways}
    for _ in range(repeats):  # interleaved
        for name, way in ways.items():
            started = time.process_time()
            way()
            spent[name] += time.process_time() - started
    return {name: seconds / repeats / tokens * 1e6 for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=16, help="answers generated at once (the claimed batch)")
    parser.add_argument("--answers", type=int, default=20000)
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="per answer (a T4 at 16 in flight)")
    parser.add_argument("--checkpoint-seconds", type=float, default=120.0)
    parser.add_argument("--sessions", type=int, default=200, help="simulated sessions per length")
    args = parser.parse_args()
    lengths = reasoning_lengths(args.answers)
    ordered = sorted(lengths)
    print(f"{len(lengths):,} answers: median {ordered[len(ordered) // 2]:,}, p90 {ordered[int(0.9 * len(ordered))]:,}, "
          f"mean {sum(lengths) / len(lengths):,.0f} tokens")
    print(f"(1) useful-token share, {args.slots} at a time: static batches {static_share(lengths, args.slots):.1%}, "
          f"continuous batching {continuous_share(lengths, args.slots):.1%}")
    print(f"(2) tokens generated twice / tokens kept, {args.slots} slots at {args.tokens_per_second:g} tokens/s each, "
          f"checkpoints every {args.checkpoint_seconds:g} s ({args.sessions} sessions each):")
    print("| session | no checkpoints | with checkpoints, SIGKILL | with checkpoints, SIGTERM "
          "(re-read as prompt instead) |")
    print("| --- | --- | --- | --- |")
    for hours in (0.5, 3.0, 12.0):
        runs = [session_loss(hours=hours, slots=args.slots, rate=args.tokens_per_second,
                             checkpoint_seconds=args.checkpoint_seconds, seed=seed) for seed in range(args.sessions)]
        mean = {key: sum(run[key] for run in runs) / len(runs) for key in runs[0]}
        print(f"| {hours:g} h | {mean['none']:.2%} | {mean['sigkill']:.2%} | 0 ({mean['none']:.2%}) |")
    cost = streaming_cost()
    print("(3) CPU microseconds per token read: " + ", ".join(f"{name} {us:.1f}" for name, us in cost.items()))


if __name__ == "__main__":
    main()
