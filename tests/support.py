"""Test fixtures shared by the tests and the benchmarks: tiny random models built locally (no
downloads, loaded with `from_pretrained`), a MongoDB store on mongomock, and a clock to move."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tasks.store.mongo import MongoStore

CHAT_TEMPLATE = ("{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def train_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained in about a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_model(folder: Path, *, chat: bool, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer random Llama and its tokenizer, saved to `folder` (pad token left unset on purpose)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [json.loads(line)["question"] for line in
             (Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:500]]
    tokenizer = train_tokenizer(texts)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_adapter(base: Path, folder: Path) -> Path:
    """A LoRA adapter (random, non-zero B so it changes outputs) for the model in `base`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def mongomock_store(clock: Any = time.time) -> MongoStore:
    """A MongoStore on mongomock (in memory), for logic tests and operation counts. mongomock is
    not thread-safe: tests that share it between threads serialise their calls."""
    import mongomock

    # mongomock 4.3 predates pymongo 4.11's `sort` argument of bulk updates (always None here).
    add_update = mongomock.collection.BulkOperationBuilder.add_update
    if not getattr(add_update, "accepts_sort", False):
        def add_update_with_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
            return add_update(self, *args, **kwargs)

        add_update_with_sort.accepts_sort = True  # type: ignore[attr-defined]
        mongomock.collection.BulkOperationBuilder.add_update = add_update_with_sort
    return MongoStore(mongomock.MongoClient()[f"fleetgen_{uuid.uuid4().hex[:8]}"], clock=clock)


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

    def __init__(self, responses: dict[str, str], device: str = "cpu", label: str = "cpu"):
        self.responses, self.device, self.label = responses, device, label

    def generate(self, prompts: list[Any], sampling: Any) -> list[Any]:
        from tasks.engines import Generation

        texts = [prompt if isinstance(prompt, str) else prompt[0]["content"] for prompt in prompts]
        answers = [next(reply for key, reply in self.responses.items() if key in text) for text in texts]
        return [Generation(answer, tokens=len(answer.split()), finish_reason="stop") for answer in answers]
