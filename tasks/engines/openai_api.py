"""The `openai` engine: any server that speaks the OpenAI chat-completions API (`vllm serve`, TGI,
llama.cpp's server, `transformers serve`, a hosted model). Up to `--concurrency` requests in
flight per endpoint, through the `openai` client: 429 and 5xx answers, timeouts and dropped
connections are retried with exponential backoff that honours `Retry-After`; a request that
still fails fails its item back (attempts + 1), never the worker. Token counts come from `usage`.
The key comes from an environment variable, is registered as a secret and is never shown."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Iterator
from urllib.parse import urlparse

from tasks.config import EngineConfig, SamplingConfig
from tasks.engines import (
    IDLE_YIELD_SECONDS,
    Abandoned,
    Feeder,
    Finished,
    Generation,
    Request,
    UnanswerableItem,
    chat_messages,
    continues_answer,
    keep_in_flight,
)
from tasks.errors import UserError
from tasks.reasoning import joined, opening, template_options
from tasks.secrets import register_secret

MAX_RETRIES = 5
TOO_LONG = re.compile(r"context length|too long|too large|longer than", re.IGNORECASE)  # vLLM, TGI, llama.cpp, OpenAI


def endpoint_label(api_base: str) -> str:
    """An endpoint's name in reports: its host and port."""
    parsed = urlparse(api_base)
    return parsed.netloc or api_base


class OpenAIEngine:
    name = "openai"

    def __init__(self, *, api_base: str, model: str, label: str, settings: EngineConfig):
        import openai

        key = os.environ.get(settings.api_key_env)
        if settings.api_key_env != EngineConfig().api_key_env and key is None:
            raise UserError(f"--api-key-env names {settings.api_key_env}, but that environment variable is not set. "
                            "Set it (a Kaggle secret, say) before the worker starts, or drop --api-key-env.")
        register_secret(key)
        self.device, self.label, self.model_name = api_base, label, model
        self.key_source = settings.api_key_env if key else None
        self.concurrency = settings.max_in_flight or settings.concurrency
        self.client = openai.OpenAI(base_url=api_base, api_key=key or "none", max_retries=MAX_RETRIES,
                                    timeout=settings.request_timeout)
        self.check()

    def check(self) -> None:
        """One tiny request first: a wrong URL, key or model name stops the worker with a clear
        message before it claims anything."""
        import openai

        where = f"the OpenAI-compatible server at {self.device}"
        try:
            self.client.with_options(max_retries=1, timeout=60).chat.completions.create(
                model=self.model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        except openai.APIConnectionError as error:
            raise UserError(f"Cannot reach {where} ({error.__cause__ or error}). Check --api-base (scheme, host, port "
                            "and the /v1 path) and that the server runs.") from None
        except openai.AuthenticationError:
            given = f"the key from {self.key_source}" if self.key_source else "no key"
            raise UserError(f"{where} refused {given} (401). Put the key in an environment variable and name it with "
                            "--api-key-env (OPENAI_API_KEY by default).") from None
        except openai.NotFoundError as error:
            raise UserError(f"{where} answered 404 for model {self.model_name!r} ({_gist(error)}): pass --model with "
                            "a name it serves, and --api-base up to /v1.") from None
        except (openai.APIStatusError, openai.APIResponseValidationError, ValueError) as error:
            raise UserError(f"{where} did not answer a chat completion for model {self.model_name!r} ({_gist(error)}). "
                            "Is it an OpenAI-compatible server, serving that model?") from None

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        in_flight: dict[Future[Generation], Request] = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"requests-{self.label}") as pool:

            def start(request: Request) -> None:
                in_flight[pool.submit(self._ask, request, sampling)] = request

            def collect(room: bool) -> list[Finished]:
                done, _ = wait(in_flight, timeout=0.05 if room else IDLE_YIELD_SECONDS, return_when=FIRST_COMPLETED)
                return [(in_flight.pop(future), answer_or_error(future)) for future in done]

            yield from keep_in_flight(feeder, capacity=self.concurrency, in_flight=in_flight.__len__, start=start,
                                      collect=collect)

    def _ask(self, request: Request, sampling: SamplingConfig) -> Generation:
        prompt = request.prompt
        messages: Any = chat_messages(prompt)
        options: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if request.seed is not None:
            options["seed"] = request.seed
        if request.stop:
            options["stop"] = list(request.stop)
        extra: dict[str, Any] = {}
        continuing = continues_answer(messages)
        if continuing:  # continue the answer so far (vLLM, SGLang, transformers serve)
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        if template := template_options(sampling.thinking):  # vLLM and SGLang pass these to the chat template
            extra["chat_template_kwargs"] = template
        if extra:
            options["extra_body"] = extra
        try:
            content, trace, finish, tokens, trace_tokens = self._complete(
                request, sampling.thinking_marker, model=self.model_name, messages=messages, n=1,
                max_tokens=request.max_new_tokens or sampling.max_new_tokens, **options)
        except Exception as error:
            if too_long(error):
                raise UnanswerableItem(f"the server refused the prompt as too long ({_gist(error)}): shorten the "
                                       "question, lower --max-new-tokens or serve a longer --max-model-len") from error
            raise
        text = content.rstrip() if continuing else content.strip()  # a continuation keeps its leading space
        if trace:  # a server that parts traces itself (vLLM's --reasoning-parser): joined again, read as ours
            marker = sampling.thinking_marker
            ended = bool(text) or finish != "length"
            text = joined(trace.strip(), text, marker=marker) if ended else f"{opening(marker) or ''}{trace}"
        return Generation(text, tokens=tokens if tokens is not None else len(text.split()),
                          finish_reason="length" if finish == "length" else "stop", reasoning_tokens=trace_tokens,
                          seed=request.seed if sampling.temperature > 0 else None)

    def _complete(self, request: Request, marker: str,
                  **options: Any) -> tuple[str, str | None, str | None, int | None, int | None]:
        """One chat completion: its text, the trace where the server parts it, the finish reason, the
        tokens, and (streamed) the trace's tokens. Streamed when the request asks to hear the answer
        as it grows: its events read as plain JSON lines (the client's typed chunks cost ~100 us a
        token here, this ~7 us: bench/reasoning.py); when the first piece comes, `on_progress` gets
        what reads the answer so far, its tokens counted one per piece (the server's count comes at
        the end), as are the trace's: up to the piece that ends with `marker` (or, parted by the
        server, its pieces)."""
        if request.on_progress is None:
            response = self.client.chat.completions.create(**options)
            choice = response.choices[0]
            trace = getattr(choice.message, "reasoning_content", None) or getattr(choice.message, "reasoning", None)
            return (choice.message.content or "", trace, choice.finish_reason,
                    response.usage.completion_tokens if response.usage else None, None)
        content, trace, finish, tokens = list[str](), list[str](), None, None
        window, trace_tokens, thought_pieces = "", None, 0

        def so_far() -> tuple[str, int]:
            return "".join(content), len(content)

        with self.client.chat.completions.with_streaming_response.create(
                **options, stream=True, stream_options={"include_usage": True}) as response:
            for line in response.iter_lines():
                if request.abandoned():  # closing the stream makes the server drop the request
                    raise Abandoned(f"the worker gave the item back; {len(content)} streamed pieces of its answer "
                                    "dropped")
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                event = json.loads(line[5:])
                if event.get("error"):  # vLLM's word for a request that failed mid-answer
                    raise RuntimeError(f"the server stopped the answer: {str(event['error'])[:300]}")
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece, thought = delta.get("content") or "", delta.get("reasoning_content") or delta.get(
                        "reasoning") or ""
                    if piece or thought:
                        content.append(piece)
                        trace.append(thought)
                        thought_pieces += bool(thought)
                        window = window[-len(marker):] + piece
                        if trace_tokens is None and marker in window:
                            trace_tokens = len(content)
                        if len(content) == 1:
                            request.on_progress(so_far)
                    finish = choice.get("finish_reason") or finish
        if finish is None:  # a stream that breaks off (or is no stream at all): the item goes back
            raise ConnectionError(f"the server's stream ended before the answer did, after {len(content)} pieces")
        return ("".join(content), "".join(trace) or None, finish, tokens if tokens is not None else len(content),
                trace_tokens if trace_tokens is not None else thought_pieces or None)

    def close(self) -> None:
        self.client.close()


def answer_or_error(future: Future[Generation]) -> Generation | Exception:
    error = future.exception()
    return error if isinstance(error, Exception) else future.result()


def too_long(error: Exception) -> bool:
    """A 400 saying the prompt (with its max_tokens) exceeds the server's context: the item's own
    fault, which no retry and no other device mends."""
    import openai

    return isinstance(error, openai.BadRequestError) and bool(TOO_LONG.search(_gist(error)))


def _gist(error: Exception) -> str:
    return str(getattr(error, "message", None) or error).splitlines()[0][:200]
