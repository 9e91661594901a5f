"""What engines that go on with an answer share (code execution, budget forcing): the request
that continues an answer so far, and a feeder that hands those continuations out first."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Callable, Generic, Protocol, TypeVar

from tasks.engines import Feeder, Finished, Generation, Request


class Opened(Protocol):
    request: Request  # the worker's request the answer is for


State = TypeVar("State", bound=Opened)


def continued(request: Request, text: str, **changes: Any) -> Request:
    """`request` going on from `text`: the conversation with the answer so far as the assistant's
    turn (continued by the chat template, or by the server: `continue_final_message`)."""
    prompt = request.prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return replace(request, prompt=[*messages, {"role": "assistant", "content": text}], **changes)


class ContinuingFeeder(Generic[State]):
    """An engine's feeder: continuations first (`back`), then new requests from the worker's feeder
    (each made ready by `first`, its state opened by `open`). Work is over only when that feeder is
    and no answer is still open. The engine streams parts of answers, not the answers a checkpoint
    must keep, so new requests lose their `on_progress`."""

    def __init__(self, inner: Feeder, *, open: Callable[[Request], State], first: Callable[[Request], Request]):
        self.inner, self._open, self._first = inner, open, first
        self.ready: list[Request] = []
        self.open: dict[str, State] = {}
        self.inner_done = False
        self.changed = threading.Condition()

    def take(self, count: int, wait: bool) -> list[Request] | None:
        while True:
            with self.changed:
                taken, self.ready = self.ready[:count], self.ready[count:]
                if taken or (self.inner_done and not self.open):
                    return taken or None
                if self.inner_done:  # only answers being continued are left: wait for one of them
                    if not wait:
                        return []
                    self.changed.wait(0.5)
                    continue
            requests = self.inner.take(count, wait=wait and not self.open)  # never block while one is open
            with self.changed:
                if requests is None:
                    self.inner_done = True
                    continue
                self.open.update((request.key, self._open(request)) for request in requests)
            if requests or not wait:
                return [self._first(replace(request, on_progress=None)) for request in requests]
            with self.changed:
                self.changed.wait(0.2)

    def back(self, request: Request) -> None:
        with self.changed:
            self.ready.append(request)
            self.changed.notify_all()

    def received(self, group: list[Finished]) -> tuple[list[Finished], list[tuple[str, State, Generation]]]:
        """A group the engine finished: the errors end their answers (returned as finished, with the
        worker's request); the answers come with their key and state."""
        failed: list[Finished] = []
        answered = []
        for request, answer in group:
            if isinstance(answer, Exception):
                failed.append((self.close(request.key).request, answer))
            else:
                answered.append((request.key, self.open[request.key], answer))
        return failed, answered

    def close(self, key: str) -> State:
        with self.changed:
            state = self.open.pop(key)
            self.changed.notify_all()
        return state
