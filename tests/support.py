"""Test fakes: a clock to move, a store serialised for threads, scripted engines and servers.
The tiny models and the mongomock store are `bench/standins.py`'s (the benchmarks use them too)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any, Callable

from prefect.client.orchestration import get_client


class FakeClock:
    """A clock that only moves when told: lease expiry without sleeping, on any store."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SerializedStore:
    """A store whose calls run one at a time (one lock for every wrapper): mongomock shared by
    the worker's threads, each command atomic as on a real server."""

    lock = threading.Lock()

    def __init__(self, store: Any):
        self._store = store
        self.url = store.url

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._store, name)

        def serialized(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return call(*args, **kwargs)

        return serialized


class ScriptedEngine:
    """An engine that answers each prompt with the scripted response of the first key found in
    it (a test double behind the engine interface; the worker around it is the real one)."""

    name = "scripted"

    def __init__(self, responses: dict[str, str] | Any, device: str = "cpu", label: str = "cpu", batch_size: int = 4):
        self.responses, self.device, self.label, self.batch_size = responses, device, label, batch_size

    def reply(self, text: str) -> str:
        return next(reply for key, reply in self.responses.items() if key in text)

    @staticmethod
    def text_of(prompt: Any) -> str:
        """What the replies are looked up in: the question (the first turn)."""
        return prompt if isinstance(prompt, str) else prompt[0]["content"]

    def run(self, feeder: Any, sampling: Any) -> Any:
        from tasks.engines import Generation, share_time

        while (requests := feeder.take(self.batch_size, wait=True)) is not None:
            answers = [self.reply(self.text_of(r.prompt)) for r in requests]
            yield share_time([(request, Generation(answer, tokens=len(answer.split()), finish_reason="stop"))
                              for request, answer in zip(requests, answers)], 0.01)

    def close(self) -> None:
        """Nothing to give back."""


class ScriptedServer:
    """An OpenAI-compatible chat-completions server in a thread, whose answers follow a script,
    one step per request: `ok`, `429` (Retry-After: 1), `500`, `hang` (longer than any timeout),
    `malformed` (not JSON), `drop` (the connection closed without an answer). After the script it
    answers `ok`. Requests for another model than `model` get a 404, as real servers do; requests
    mentioning `poison` always get malformed answers, those mentioning `too_long` vLLM's 400 for a
    prompt longer than its context. `reply` answers a request's body with (text, finish reason). A
    request with `stream` gets its text as server-sent events, a word at a time (one token each),
    `stream_delay` seconds apart; `streamed` counts the words sent of each streamed request; with
    `hold_after`, a stream pauses after that many words until `release` is set."""

    def __init__(self, script: list[str], model: str = "scripted-model", answer: str = "So it is 7.\n#### 7",
                 poison: str | None = None, too_long: str | None = None,
                 reply: Callable[[dict[str, Any]], tuple[str, str]] | None = None, stream_delay: float = 0.0,
                 hold_after: int | None = None):
        import http.server

        self.script, self.model, self.answer, self.poison = list(script), model, answer, poison
        self.reply = reply or (lambda body: (self.answer, "stop"))  # a request's (text, finish reason)
        self.stream_delay, self.streamed = stream_delay, list[int]()
        self.hold_after, self.release = hold_after, threading.Event()
        self.too_long = too_long
        self.requests: list[dict[str, Any]] = []  # each request's body and Authorization header
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None: ...

            def do_GET(self) -> None:
                self._send(200, b'{"status": "ok"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"body": body, "authorization": self.headers.get("Authorization")})
                    step = server.script.pop(0) if server.script else "ok"
                    if server.poison and server.poison in json.dumps(body.get("messages")):
                        step = "malformed"  # a question this server never answers
                    if server.too_long and server.too_long in json.dumps(body.get("messages")):
                        step = "400"
                if body.get("model") != server.model:
                    return self._send(404, json.dumps({"error": {"message": f"model {body.get('model')} not found",
                                                                 "type": "not_found_error"}}).encode())
                if step == "429":
                    return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
                if step == "400":  # vLLM 0.32's words
                    words = ("This model's maximum context length is 64 tokens. However, your request has 65 "
                             "input tokens.")
                    error = {"error": {"message": words, "type": "BadRequestError"}}
                    return self._send(400, json.dumps(error).encode())
                if step == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if step == "hang":
                    time.sleep(30)
                    return
                if step == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [')
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                text, finish = server.reply(body)
                if body.get("stream"):
                    return self._stream(text, finish)
                self._send(200, json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": server.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()),
                              "total_tokens": 5 + len(text.split())}}).encode())

            def _stream(self, text: str, finish: str) -> None:
                words = re.findall(r"\s*\S+", text)
                with server.lock:
                    server.streamed.append(0)
                    index = len(server.streamed) - 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(delta: dict[str, Any], finish_reason: str | None = None, usage: Any = None) -> None:
                    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": server.model,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if delta else [],
                             "usage": usage}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                try:
                    event({"role": "assistant", "content": ""})
                    for sent, word in enumerate(words):
                        if sent == server.hold_after:
                            server.release.wait()
                        time.sleep(server.stream_delay)
                        event({"content": word})
                        server.streamed[index] += 1
                    event({"content": ""}, finish)
                    event({}, usage={"prompt_tokens": 5, "completion_tokens": len(words),
                                     "total_tokens": 5 + len(words)})
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):  # the worker went away mid-answer
                    pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def settled_events_since(since: datetime, *, until: Callable[[Counter[str]], bool] = lambda events: True,
                         quiet_seconds: float = 2.0, timeout: float = 60.0) -> Counter[str]:
    """`events_since` once `until` holds and it has stopped changing for `quiet_seconds`: the
    server writes the events it received in the background."""
    deadline, last, steady_since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        events = events_since(since)
        if events != last:
            last, steady_since = events, time.monotonic()
        elif until(events) and time.monotonic() - steady_since >= quiet_seconds or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def events_since(since: datetime) -> Counter[str]:
    """The events the server holds that occurred since `since`, by name."""
    names: Counter[str] = Counter()
    with get_client(sync_client=True) as client:
        page = client._client.post("/events/filter", json={
            "filter": {"occurred": {"since": since.isoformat()}}, "limit": 50}).json()
        while True:
            names.update(event["event"] for event in page["events"])
            if not page.get("next_page"):
                return names
            page = client._client.get(page["next_page"]).json()


def wait_until(condition: Callable[[], bool], *, timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
