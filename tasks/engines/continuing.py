"""What engines that go on with an answer share (code execution, budget forcing): the request
that continues an answer so far, and a feeder that hands those continuations out first and lets
a checkpoint read an answer over all of its parts."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Callable, Generic, Protocol, TypeVar

from tasks.engines import Feeder, Finished, Generation, Request, chat_messages, continues_answer

Reader = Callable[[], tuple[str, int]]  # an answer so far: its text and tokens


class Opened(Protocol):
    request: Request  # the worker's request the answer is for
    text: str  # the answer so far (after what the request's prompt already holds)

    @property
    def tokens(self) -> int: ...


State = TypeVar("State", bound=Opened)


def so_far_text(request: Request) -> str:
    """The answer so far that `request`'s prompt ends with (its assistant turn), or nothing."""
    messages = chat_messages(request.prompt)
    return messages[-1]["content"] if continues_answer(messages) else ""


def fixed(text: str, tokens: int) -> Reader:
    """What reads an answer that does not grow now."""
    return lambda: (text, tokens)


def continued(request: Request, text: str, **changes: Any) -> Request:
    """`request` going on from `text`: the conversation with the answer so far as the assistant's
    turn (continued by the chat template, or by the server: `continue_final_message`). A request
    that already went on from a checkpoint goes on from it followed by `text`."""
    messages = chat_messages(request.prompt)
    if continues_answer(messages):
        messages, text = messages[:-1], messages[-1]["content"] + text
    return replace(request, prompt=[*messages, {"role": "assistant", "content": text}], **changes)


class ContinuingFeeder(Generic[State]):
    """An engine's feeder: continuations first (`back`), then new requests from the worker's feeder
    (each made ready by `first`, its state opened by `open`). Work is over only when that feeder is
    and no answer is still open. A request the worker streams (`on_progress`) is read over all of
    its parts: what is kept before the part being streamed, then that part, as far as `unsettled`
    does not say the wrapper may still cut it (between parts, only what is kept)."""

    def __init__(self, inner: Feeder, *, open: Callable[[Request], State], first: Callable[[Request], Request],
                 unsettled: Callable[[str], bool] = lambda text: False):
        self.inner, self._open, self._first, self._unsettled = inner, open, first, unsettled
        self.ready: list[Request] = []
        self.open: dict[str, State] = {}
        self.inner_done = False
        self.changed = threading.Condition()
        self._listeners: dict[str, Callable[[Reader], None]] = {}  # the worker's on_progress, per answer
        self._parts: dict[str, Reader] = {}  # what reads each answer's part being streamed, kept text included

    def take(self, count: int, wait: bool) -> list[Request] | None:
        while True:
            with self.changed:
                taken, self.ready = self.ready[:count], self.ready[count:]
                if taken or (self.inner_done and not self.open):
                    return [self._listened(request) for request in taken] or None
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
                for request in requests:
                    self.open[request.key] = self._open(request)
                    if request.on_progress is not None:
                        self._listeners[request.key] = request.on_progress
            if requests or not wait:
                return [self._listened(self._first(request)) for request in requests]
            with self.changed:
                self.changed.wait(0.2)

    def _listened(self, request: Request) -> Request:
        """A part of an answer as the engine gets it: told, when the worker streams the answer, to
        hand over what reads the part."""
        key = request.key
        if key not in self._listeners:
            return replace(request, on_progress=None)

        def started(read: Reader) -> None:
            state = self.open[key]
            kept_text, kept_tokens, settled = state.text, state.tokens, ("", 0)

            def part() -> tuple[str, int]:
                nonlocal settled
                text, tokens = read()
                if not self._unsettled(text):
                    settled = (text, tokens)
                return kept_text + settled[0], kept_tokens + settled[1]

            first = key not in self._parts
            self._parts[key] = part
            if first:
                self._listeners[key](lambda: self._parts.get(key, fixed("", 0))())

        return replace(request, on_progress=started)

    def back(self, request: Request) -> None:
        with self.changed:
            self.ready.append(request)
            self.changed.notify_all()

    def received(self, group: list[Finished]) -> tuple[list[Finished], list[tuple[str, State, Generation]]]:
        """A group the engine finished: the errors end their answers (returned as finished, with the
        worker's request); the answers come with their key and state. Until its next part streams,
        an answer reads as what was kept before the part that ended."""
        failed: list[Finished] = []
        answered = []
        for request, answer in group:
            if isinstance(answer, Exception):
                failed.append((self.close(request.key).request, answer))
                continue
            state = self.open[request.key]
            if request.key in self._parts:
                self._parts[request.key] = fixed(state.text, state.tokens)
            answered.append((request.key, state, answer))
        return failed, answered

    def close(self, key: str) -> State:
        with self.changed:
            state = self.open.pop(key)
            self._listeners.pop(key, None)
            self._parts.pop(key, None)
            self.changed.notify_all()
        return state
