"""Generation engines behind one small interface.

An engine *runs* a stream of requests: it takes requests from a feeder when it has room (a
batch at a time, or up to N in flight) and yields the finished ones in groups as they end. The
worker never knows which engine it drives. One module per engine:
`hf_static.py` (`model.generate` on length-sorted batches), `hf_continuous.py` (transformers'
continuous batching), `openai_api.py` (any OpenAI-compatible server), `served.py` (servers the
worker starts itself, one per GPU: `vllm serve`); `create_engine` picks one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from tasks.config import EngineConfig, ModelConfig, SamplingConfig

Prompt = str | list[dict[str, str]]  # a text (one user turn) or chat messages


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: a text is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def continues_answer(messages: list[dict[str, str]]) -> bool:
    """The conversation ends with the assistant's turn: an answer so far, to be continued."""
    return messages[-1]["role"] == "assistant"
IDLE_YIELD_SECONDS = 1.0  # an empty group this often while answers are still being written


class Abandoned(RuntimeError):
    """The worker gave the item back while it was being generated (its stop's grace was over): the
    engine stopped; the answer so far is no answer."""

    def __init__(self, message: str = "the worker gave the item back while it was being generated"):
        super().__init__(message)


class UnanswerableItem(ValueError):
    """The item itself cannot be answered (a prompt longer than the model reads): it fails at
    once, with no retry, and says nothing about the device."""


@dataclass(frozen=True)
class Request:
    key: str  # the work item's id
    prompt: Prompt
    seed: int | None = None  # this sample's own draw (hf-static and servers honour it; see Generation.seed)
    max_new_tokens: int | None = None  # per request; by default the sampling settings'
    stop: tuple[str, ...] = ()  # texts that end the answer early, where the engine honours them
    tokens_so_far: int = 0  # when the prompt ends with the answer so far (a checkpoint), its tokens
    # streaming engines (openai, vllm) hand this, when the answer starts, what reads it so far (text, tokens)
    on_progress: Callable[[Callable[[], tuple[str, int]]], None] | None = field(default=None, compare=False,
                                                                                 repr=False)
    # True once the worker gave the item back (its stop's grace is over): an engine may stop generating it
    abandoned: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


@dataclass
class Generation:
    text: str  # the new tokens only, never the prompt
    tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    seconds: float = 0.0  # this answer's share of the device's busy time (shares add up to it)
    extracted: str | None = None  # the final answer a second pass read, where the text alone does not say it
    code_executions: int | None = None  # with code execution: how many of its blocks ran,
    code_errors: int | None = None  # how many of them failed,
    code_seconds: float | None = None  # and how long they took
    seed: int | None = None  # the request's seed, where the engine drew this answer with it (temperature > 0)
    reasoning_tokens: int | None = None  # of `tokens`, the trace's up to its marker, where the engine counted them
    thinking_forced: bool | None = None  # budget forcing: whether the trace was closed at the budget


Finished = tuple[Request, Generation | Exception]


class Feeder(Protocol):
    def take(self, count: int, wait: bool) -> list[Request] | None:
        """Up to `count` requests. With `wait`, blocks until there are some; None when the work
        is over. Without, returns at once (maybe none)."""


class Engine(Protocol):
    name: str  # recorded with every answer it makes
    device: str
    label: str  # the device's name in reports (`cpu#0` when a device holds two copies)

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        """Answer the feeder's requests until it is done, yielding finished ones in groups (an
        empty group now and then while a long answer is still being written)."""

    def close(self) -> None:
        """Give back what the engine holds (a server process, a cache)."""


def create_engine(*, engine: EngineConfig, model: ModelConfig, device: str, label: str, batch_size: int,
                  context_tokens: int = 4096) -> Engine:
    """Load `engine.name` for `model` on `device` (for API engines, `device` is an endpoint); a
    started server gets a context of `context_tokens`."""
    if engine.name == "auto":
        from tasks.engines.devices import choose_engine

        engine, _ = choose_engine(engine, devices=device)
    if engine.name == "hf-static":
        from tasks.engines.hf_static import HFStaticEngine

        return HFStaticEngine(model, device=device, label=label, batch_size=batch_size, compiled=engine.compile)
    if engine.name == "hf":
        from tasks.engines.hf_continuous import HFContinuousEngine

        return HFContinuousEngine(model, device=device, label=label, settings=engine)
    from tasks.engines.openai_api import OpenAIEngine

    if engine.name == "openai":
        return OpenAIEngine(api_base=device, model=model.model, label=label, settings=engine)
    from tasks.engines.served import ServedEngine

    return ServedEngine(model, device=device, label=label, settings=engine, context_tokens=context_tokens)


def share_time(group: list[Finished], seconds: float) -> list[Finished]:
    """Give each answer of a group its share of `seconds` by tokens, so shares add up."""
    answers = [generation for _, generation in group if isinstance(generation, Generation)]
    tokens = sum(answer.tokens for answer in answers)
    for answer in answers:
        answer.seconds = round(seconds * answer.tokens / tokens if tokens else seconds / len(answers), 4)
    return group


def keep_in_flight(feeder: Feeder, *, capacity: int, in_flight: Callable[[], int],
                   start: Callable[[Request], Finished | None],
                   collect: Callable[[bool], list[Finished]]) -> Iterator[list[Finished]]:
    """The loop of engines that answer up to `capacity` requests at once, each ending on its own:
    take requests while there is room (waiting only when none is in flight), `start` each (a
    request refused at once comes back as finished), `collect` what ended (told whether there is
    room, so it waits briefly rather than long), and yield it with its share of the time; an empty
    group every IDLE_YIELD_SECONDS while answers are still being written. Until the feeder is
    done and nothing is in flight."""
    exhausted, last = False, time.perf_counter()
    while not exhausted or in_flight():
        group: list[Finished] = []
        if not exhausted and in_flight() < capacity:
            taken = feeder.take(capacity - in_flight(), wait=not in_flight())
            exhausted = taken is None
            group += [refused for request in taken or [] if (refused := start(request)) is not None]
        group += collect(not exhausted and in_flight() < capacity)
        if group or time.perf_counter() - last > IDLE_YIELD_SECONDS:
            now = time.perf_counter()
            yield share_time(group, now - last)
            last = now


class ListFeeder:
    """A fixed list of requests (benchmarks, tests, an extraction pass)."""

    def __init__(self, requests: list[Request]):
        self.pending = list(requests)

    def take(self, count: int, wait: bool) -> list[Request] | None:
        if not self.pending:
            return None
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken


def answer_all(engine: Engine, requests: list[Request], sampling: SamplingConfig) -> list[Generation | Exception]:
    """Every request through the engine; the answers in the requests' order."""
    answers: dict[str, Generation | Exception] = {}
    for group in engine.run(ListFeeder(requests), sampling):
        answers.update((request.key, answer) for request, answer in group)
    return [answers[request.key] for request in requests]
