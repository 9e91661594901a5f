"""Stand-ins for what this machine cannot download or install, shared by the benchmarks and the
tests: tiny models and tokenizers built locally (random weights of real architectures, loaded
through `from_pretrained`; no downloads) and a MongoDB store on mongomock (in memory)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.store.mongo import MongoStore

# Qwen3's way with thinking: `enable_thinking=False` writes an empty trace into the prompt
CHAT_TEMPLATE = ("{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: "
                 "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")


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


ARCHITECTURES = {  # real configurations for the benchmarks, randomly initialised (speed does not depend on weights)
    "qwen2.5-1.5b": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
                     "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                     "tie_word_embeddings": True},
    "qwen2.5-7b": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                   "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "tie_word_embeddings": False},
}


def build_model(folder: Path, *, chat: bool, hidden: int = 32, layers: int = 2, seed: int = 0,
                architecture: str | None = None) -> Path:
    """A random model and its tokenizer, saved to `folder` (pad token left unset on purpose): a
    small Llama (`hidden`, `layers`), or one of ARCHITECTURES in bfloat16 (built on the GPU if any)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    texts = [json.loads(line)["question"] for line in
             (Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:500]]
    tokenizer = train_tokenizer(texts)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    if architecture:
        settings = dict(ARCHITECTURES[architecture])
        config = AutoConfig.for_model(str(settings.pop("model_type")), **settings, max_position_embeddings=4096,
                                      bos_token_id=1, eos_token_id=2)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                                             intermediate_size=hidden * 2, num_hidden_layers=layers,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=2048, bos_token_id=1, eos_token_id=2))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_encoder(folder: Path) -> Path:
    """A random one-layer BERT and its tokenizer, saved to `folder`: a sentence-embedding model's shape."""
    import torch
    from transformers import BertConfig, BertModel

    texts = [json.loads(line)["question"] for line in
             (Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:500]]
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(folder)
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
    model.save_pretrained(str(folder))
    return folder


def mongomock_store(clock: Any = time.time) -> MongoStore:
    """A MongoStore on mongomock (in memory), for logic tests and operation counts. mongomock is
    not thread-safe: tests that share it between threads serialise their calls."""
    import mongomock
    from mongomock.collection import BulkOperationBuilder

    from tasks.store.mongo import MongoStore

    # mongomock 4.3 predates pymongo 4.11's `sort` argument of bulk updates (always None here).
    add_update = BulkOperationBuilder.add_update
    if not getattr(add_update, "accepts_sort", False):
        def add_update_with_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
            return add_update(self, *args, **kwargs)

        setattr(add_update_with_sort, "accepts_sort", True)
        setattr(BulkOperationBuilder, "add_update", add_update_with_sort)  # patching the library's class
    return MongoStore(mongomock.MongoClient()[f"fleetgen_{uuid.uuid4().hex[:8]}"], clock=clock)
