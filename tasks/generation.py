"""Hugging Face generation: load one model copy per device and generate answers in batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from tasks.cli import UserError

QUANTIZATIONS = ("none", "4bit", "8bit")
DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a folder or hub id, an optional LoRA adapter, quantization and dtype."""

    model: str
    adapter: str | None = None
    merge_adapter: bool = False
    quantization: str = "none"
    dtype: str = "auto"

    def describe(self) -> dict[str, Any]:
        """The non-default settings, compact enough to store with every item."""
        defaults = ModelSpec(self.model)
        return {key: value for key, value in asdict(self).items() if key == "model" or value != getattr(defaults, key)}


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0


Prompt = str | list[dict[str, str]]  # a text (one user turn) or chat messages


@dataclass
class Generation:
    text: str  # the new tokens only, never the prompt
    tokens: int


def resolve_devices(devices: str) -> list[str]:
    """`auto` (every visible GPU, else cpu) or a comma list such as `cuda:0,cuda:1` or `cpu,cpu`."""
    gpus = torch.cuda.device_count()
    if devices == "auto":
        return [f"cuda:{index}" for index in range(gpus)] or ["cpu"]
    names = [name.strip() for name in devices.split(",") if name.strip()]
    for name in names:
        if name == "cuda":
            raise UserError("Name each GPU with its index, e.g. --devices cuda:0,cuda:1 (or --devices auto).")
        if name.startswith("cuda:") and name[5:].isdigit():
            if int(name[5:]) >= gpus:
                raise UserError(f"--devices names {name}, but this machine has {gpus} visible GPU(s). "
                                "Use --devices auto, or --devices cpu to run on the processor.")
        elif name != "cpu":
            raise UserError(f"Unknown device {name!r} in --devices {devices!r}: use auto, cpu, or cuda:N (comma separated).")
    if not names:
        raise UserError("--devices is empty: use auto, cpu, or a comma list such as cuda:0,cuda:1.")
    return names


def device_labels(devices: list[str]) -> list[str]:
    """Unique names for reports: `cpu,cpu` -> `cpu#0`, `cpu#1`; distinct devices keep their names."""
    return [f"{name}#{index}" if devices.count(name) > 1 else name for index, name in enumerate(devices)]


def _dtype(name: str, device: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # T4: float16
    return torch.float32


class LoadedModel:
    """One model copy on one device, with its tokenizer; `label` names it in reports."""

    def __init__(self, spec: ModelSpec, device: str, label: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if spec.quantization != "none" and not device.startswith("cuda"):
            raise UserError(f"--quantization {spec.quantization} (bitsandbytes) needs a CUDA GPU, but the device is "
                            f"{device}. Use --quantization none on CPU.")
        if spec.quantization != "none" and spec.merge_adapter:
            raise UserError("--merge-adapter cannot merge into a quantized model: drop --merge-adapter (the adapter "
                            "still applies) or use --quantization none.")
        self.spec, self.device, self.label = spec, device, label or device
        options: dict[str, Any] = {"dtype": _dtype(spec.dtype, device)}
        if spec.quantization != "none":
            from transformers import BitsAndBytesConfig

            options["device_map"] = {"": device}
            options["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float16)
                if spec.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
            model = AutoModelForCausalLM.from_pretrained(spec.model, **options)
        except (OSError, ValueError) as error:
            raise UserError(
                f"Cannot load model {spec.model!r}: {str(error).splitlines()[0][:300]} Pass --model with a local "
                "folder holding config.json, the weights and the tokenizer (save_pretrained), or a hub id on a "
                "machine that is online."
            ) from error
        if spec.quantization == "none":
            model = model.to(device)
        if spec.adapter:
            model = self._with_adapter(model, spec)
        self.model = model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))

    @staticmethod
    def _with_adapter(model: Any, spec: ModelSpec) -> Any:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, spec.adapter)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise UserError(
                f"Cannot apply the adapter {spec.adapter!r} to {spec.model!r}: {str(error).splitlines()[0][:300]} "
                "Check that the adapter folder holds adapter_config.json and was trained on this base model."
            ) from error
        return model.merge_and_unload() if spec.merge_adapter else model

    def prompt_text(self, prompt: Prompt) -> str:
        """The text the model sees: the chat template when the tokenizer has one, else the turns
        joined by blank lines."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not self.chat:
            return "\n\n".join(message["content"] for message in messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[Prompt], sampling: Sampling) -> list[Generation]:
        """One batch through `model.generate`; sampling as given (greedy at temperature 0)."""
        from transformers import GenerationConfig

        texts = [self.prompt_text(prompt) for prompt in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat).to(self.device)
        sample = sampling.temperature > 0
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=sample,
            temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
            top_k=None, repetition_penalty=sampling.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        with torch.inference_mode():
            output = self.model.generate(**batch, generation_config=config)
        new = output[:, batch["input_ids"].shape[1]:].cpu()
        stops = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        counts = []
        for row in new.tolist():
            ends = [index for index, token in enumerate(row) if token in stops]
            counts.append(ends[0] + 1 if ends else len(row))
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [Generation(text.strip(), tokens) for text, tokens in zip(decoded, counts)]


def generate_splitting(model: LoadedModel, prompts: list[Prompt], sampling: Sampling) -> list[Generation | Exception]:
    """Generate a batch; when it raises (e.g. CUDA out of memory), retry each half on its own.
    A single prompt that still fails yields its exception instead of a generation."""
    try:
        return list(model.generate(prompts, sampling))
    except Exception as error:  # out of memory, a bad prompt, a driver error: all worth a smaller try
        if model.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if len(prompts) == 1:
            return [error]
        half = len(prompts) // 2
        return generate_splitting(model, prompts[:half], sampling) + generate_splitting(model, prompts[half:], sampling)

