"""A Hugging Face model and its tokenizer, loaded once per device for the `hf-static` and `hf`
engines: dtype per device, bitsandbytes quantization, a PEFT adapter, the chat template."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch

from tasks.config import ModelConfig, SamplingConfig
from tasks.engines import Abandoned, Generation, Prompt, UnanswerableItem, chat_messages, continues_answer
from tasks.engines.devices import dtype_name
from tasks.errors import UserError
from tasks.reasoning import template_options

CACHE_STEP = 512  # a compiled model's static cache is sized in steps of this many tokens (one compile per size)
log = logging.getLogger("fleetgen")


def warn_if_compiled_on_cpu(*, compiled: bool, label: str, device: str, measured: str) -> None:
    """--compile is for GPUs: on a CPU, say how much slower it was measured (bench/engines.py)."""
    if compiled and not device.startswith("cuda"):
        log.warning(f"{label}: --compile on {device}: measured {measured} the speed without it on a CPU "
                    "(docs/benchmarks.md); it is meant for GPUs. Drop --compile here.")


class CompileGate:
    """The compiled models of one process (one per device): a batch of a shape its model has not
    run yet (it may compile) runs alone, the others together. While one thread compiles,
    `torch.compiler.is_compiling()` is true on every thread (one process-wide flag), so a batch
    running meanwhile on another copy (a batch's first step is never compiled) takes compile-only
    paths: transformers' models route rotary embeddings through the `kernels` package (one of its
    dependencies), which then writes its compile-time global, and dynamo's guards failed
    ("Unexpected type <class 'dict'>"; tests/test_engines.py, in every run without this gate)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._compiling = False  # a batch that may compile runs, or waits for the others to end

    @contextmanager
    def enter(self, *, alone: bool) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._compiling)
            if alone:
                self._compiling = True  # no batch starts meanwhile
                self._changed.wait_for(lambda: self._running == 0)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                if alone:
                    self._compiling = False
                self._changed.notify_all()


COMPILING = CompileGate()


def _dtype(name: str, device: str) -> torch.dtype:
    return getattr(torch, dtype_name(name, device))


class SeededDraws:
    """A logits processor that draws each row's next token with the row's own generator (the
    Gumbel-max trick on the warped scores, read by greedy search's argmax): a sample's random
    draws depend on its seed, never on the batch it shares, its place in it or the device's other
    work (in bfloat16 on a GPU the scores themselves may round differently in another batch)."""

    def __init__(self, seeds: list[int], device: str):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=generator, device=scores.device)
                               for generator in self.generators])
        return scores.float() - torch.log(-torch.log(uniform.clamp_min(1e-20)))


class WhenAbandoned:
    """A stopping criterion: every row of the batch ends once `abandoned` says so."""

    def __init__(self, abandoned: Callable[[], bool]):
        self.abandoned = abandoned

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.abandoned(), dtype=torch.bool, device=input_ids.device)


def seeded_processors(sampling: SamplingConfig, seeds: list[int], device: str) -> list[Any]:
    """Temperature and top-p as transformers' sampling applies them, then each row's seeded draw."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = ([TemperatureLogitsWarper(sampling.temperature)] if sampling.temperature != 1.0 else []) + (
        [TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1.0 else [])
    return [*warpers, SeededDraws(seeds, device)]


def prompt_text(tokenizer: Any, prompt: Prompt, thinking: str = "auto") -> str:
    """The text a model sees: its chat template when the tokenizer has one (told whether to think,
    unless `auto`), else the turns joined by blank lines. A conversation ending with the
    assistant's turn is continued."""
    messages = chat_messages(prompt)
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(message["content"] for message in messages)
    go_on = continues_answer(messages)
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not go_on,
                                             continue_final_message=go_on, **template_options(thinking)))


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], thinking: str = "auto") -> list[list[int]]:
    """Each prompt's tokens as the model reads them, in one call of the tokenizer."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    texts = [prompt_text(tokenizer, prompt, thinking) for prompt in prompts]
    return list(tokenizer(texts, add_special_tokens=not chat)["input_ids"]) if texts else []


class HFModel:
    """A model and its tokenizer loaded with `from_pretrained`, a PEFT adapter applied if asked."""

    def __init__(self, config: ModelConfig, *, device: str, label: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if config.quantization != "none" and not device.startswith("cuda"):
            raise UserError(f"--quantization {config.quantization} (bitsandbytes) needs a CUDA GPU, but the device is "
                            f"{device}. Use --quantization none on CPU.")
        self.config, self.device, self.label = config, device, label or device
        options: dict[str, Any] = {"dtype": _dtype(config.dtype, device)}
        if config.quantization != "none":
            from transformers import BitsAndBytesConfig

            options["device_map"] = {"": device}
            options["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float16)
                if config.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            model: Any = AutoModelForCausalLM.from_pretrained(config.model, **options)
        except (OSError, ValueError) as error:
            raise UserError(
                f"Cannot load model {config.model!r}: {str(error).splitlines()[0][:300]} Pass --model with a local "
                "folder holding config.json, the weights and the tokenizer (save_pretrained), or a hub id on a "
                "machine that is online."
            ) from error
        if config.quantization == "none":
            model = model.to(device)
        if config.adapter:
            model = self._with_adapter(model, config, config.adapter)
        self.model = model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        self.eos = eos
        # --compile: a static KV cache and a compiled decode step (CUDA graphs on a GPU), every batch
        # padded to this many rows and the cache sized in CACHE_STEP steps, so each size compiles once
        self.compiled_batch: int | None = None
        self.compiled_shapes: set[tuple[Any, ...]] = set()  # those run once (compiled): see CompileGate

    @staticmethod
    def _with_adapter(model: Any, config: ModelConfig, adapter: str) -> Any:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise UserError(
                f"Cannot apply the adapter {config.adapter!r} to {config.model!r}: {str(error).splitlines()[0][:300]} "
                "Check that the adapter folder holds adapter_config.json and was trained on this base model."
            ) from error
        return model.merge_and_unload() if config.merge_adapter else model

    def prompt_text(self, prompt: Prompt, thinking: str = "auto") -> str:
        return prompt_text(self.tokenizer, prompt, thinking)

    def encode(self, prompt: Prompt, thinking: str = "auto") -> list[int]:
        return self.encode_all([prompt], thinking)[0]

    def encode_all(self, prompts: Sequence[Prompt], thinking: str = "auto") -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, thinking)

    def too_long(self, tokens: list[int]) -> UnanswerableItem | None:
        """The error of a prompt the model cannot read (longer than its context): that item
        fails with it, instead of taking the machine's memory (a likely poison item)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and len(tokens) >= context:
            return UnanswerableItem(f"the prompt is {len(tokens):,} tokens, but {self.config.model} reads at most "
                                    f"{context:,}: shorten the question or use a model with a longer context")
        return None

    def answer(self, tokens: list[int], marker: str) -> Generation:
        """The text of newly generated tokens, cut after the first end of sequence; where it holds
        a trace's `marker`, the tokens up to it counted."""
        end = next((index for index, token in enumerate(tokens) if token in self.stop_ids), None)
        kept = tokens if end is None else tokens[:end + 1]
        text = str(self.tokenizer.decode(kept, skip_special_tokens=True))
        return Generation(text.strip(), tokens=len(kept), finish_reason="length" if end is None else "stop",
                          reasoning_tokens=self.tokens_to(marker, kept) if marker in text else None)

    def tokens_to(self, marker: str, tokens: list[int]) -> int:
        """How many of `tokens` it takes for their text to hold `marker` (which it does)."""
        low, high = 1, len(tokens)
        while low < high:
            middle = (low + high) // 2
            if marker in self.tokenizer.decode(tokens[:middle], skip_special_tokens=True):
                high = middle
            else:
                low = middle + 1
        return low

    def generation_config(self, sampling: SamplingConfig, *, seeded: bool = False) -> Any:
        """Greedy at temperature 0, or when `seeded_processors` draw the tokens; else sampling."""
        from transformers import GenerationConfig

        sample = sampling.temperature > 0 and not seeded
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=sample,
            temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
            top_k=None, repetition_penalty=sampling.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos)

    def _compiled_options(self, prompt_length: int, max_new_tokens: int) -> dict[str, Any]:
        """`model.generate`'s settings for a compiled batch (see `compiled_batch`)."""
        from transformers import CompileConfig

        compiling = CompileConfig(mode="reduce-overhead" if self.device.startswith("cuda") else "default")
        compiling._compile_all_devices = True  # transformers compiles on GPUs only unless told
        cache = -(-(prompt_length + max_new_tokens) // CACHE_STEP) * CACHE_STEP
        return {"cache_implementation": "static", "max_cache_len": cache, "compile_config": compiling}

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig, *, limits: list[int] | None = None,
                 stop: tuple[str, ...] = (), seeds: list[int | None] | None = None,
                 abandoned: Callable[[], bool] = lambda: False, tokens: list[list[int]] | None = None,
                 pad_to: int | None = None) -> list[Generation]:
        """One static batch through `model.generate` (left padding; greedy at temperature 0). With
        `limits`, each answer stops at its own length (the batch runs to the longest); with
        `stop`, at the first of those texts; with a seed for every prompt, each is drawn with its
        own (recorded on its generation), else from the device's generator. Once `abandoned` says
        so, the batch stops at the next token and raises Abandoned. `tokens`: the prompts already
        encoded (`encode_all`), not encoded again. `pad_to`: with --compile, the rows the batch is
        padded to (default `compiled_batch`; smaller for the halves of a batch that failed)."""
        draws = [seed for seed in seeds or [] if seed is not None] if sampling.temperature > 0 else []
        seeded = bool(prompts) and len(draws) == len(prompts)
        if limits:
            sampling = sampling.model_copy(update={"max_new_tokens": max(limits)})
        ids = tokens if tokens is not None else self.encode_all(prompts, sampling.thinking)
        config = self.generation_config(sampling, seeded=seeded)
        shape = None
        if self.compiled_batch:  # the same shape every time: rows repeated, their answers dropped
            filler = max(0, (pad_to or self.compiled_batch) - len(ids))
            ids, draws = [*ids, *[ids[-1]] * filler], [*draws, *draws[-1:] * filler]
            config.update(**self._compiled_options(max(map(len, ids)), sampling.max_new_tokens))
            shape = (len(ids), config.max_cache_len, seeded, config.do_sample)
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        gate: ContextManager[None] = nullcontext() if shape is None else COMPILING.enter(
            alone=shape not in self.compiled_shapes)
        try:
            with gate, torch.inference_mode():
                output = self.model.generate(
                    **batch, generation_config=config,
                    logits_processor=seeded_processors(sampling, draws, self.device) if seeded else None,
                    stopping_criteria=[WhenAbandoned(abandoned)],
                    **({"stop_strings": list(stop), "tokenizer": self.tokenizer} if stop else {}))
        except Exception:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()  # an out-of-memory batch is retried in halves
            raise
        if shape:
            self.compiled_shapes.add(shape)
        if abandoned():
            raise Abandoned()
        rows = output[:len(prompts), batch["input_ids"].shape[1]:].cpu().tolist()
        ends = limits or [len(row) for row in rows]
        answers = [self.answer(row[:end], sampling.thinking_marker) for row, end in zip(rows, ends)]
        return [replace(answer, seed=seed) for answer, seed in zip(answers, draws)] if seeded else answers
