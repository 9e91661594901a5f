"""The `openai` engine: any server that speaks the OpenAI chat-completions API (`vllm serve`, TGI,
llama.cpp's server, `transformers serve`, a hosted model). Up to `--concurrency` requests in
flight per endpoint, through the `openai` client: 429 and 5xx answers, timeouts and dropped
connections are retried with exponential backoff that honours `Retry-After`; a request that
still fails fails its item back (attempts + 1), never the worker. Token counts come from `usage`.
The key comes from an environment variable, is registered as a secret and is never shown."""

from __future__ import annotations

import os
import re
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Iterator
from urllib.parse import urlparse

from tasks.config import EngineConfig, SamplingConfig
from tasks.engines import IDLE_YIELD_SECONDS, Feeder, Finished, Generation, Request, UnanswerableItem, keep_in_flight
from tasks.errors import UserError
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
        messages: Any = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        options: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if request.seed is not None:
            options["seed"] = request.seed
        if request.stop:
            options["stop"] = list(request.stop)
        if messages[-1]["role"] == "assistant":  # continue the answer so far (vLLM, SGLang, transformers serve)
            options["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        try:
            response = self.client.chat.completions.create(
                model=self.model_name, messages=messages, max_tokens=request.max_new_tokens or sampling.max_new_tokens,
                n=1, **options)
        except Exception as error:
            if too_long(error):
                raise UnanswerableItem(f"the server refused the prompt as too long ({_gist(error)}): shorten the "
                                       "question, lower --max-new-tokens or serve a longer --max-model-len") from error
            raise
        choice = response.choices[0]
        text = (choice.message.content or "").strip()
        tokens = response.usage.completion_tokens if response.usage else len(text.split())
        return Generation(text, tokens=tokens, finish_reason="length" if choice.finish_reason == "length" else "stop",
                          seed=request.seed if sampling.temperature > 0 else None)

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
