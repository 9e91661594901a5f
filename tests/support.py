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
        config = AutoConfig.for_model(settings.pop("model_type"), **settings, max_position_embeddings=4096,
                                      bos_token_id=1, eos_token_id=2)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                                             num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
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
    mentioning `poison` always get malformed answers."""

    def __init__(self, script: list[str], model: str = "scripted-model", answer: str = "So it is 7.\n#### 7",
                 poison: str | None = None):
        import http.server

        self.script, self.model, self.answer, self.poison = list(script), model, answer, poison
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
                if body.get("model") != server.model:
                    return self._send(404, json.dumps({"error": {"message": f"model {body.get('model')} not found",
                                                                 "type": "not_found_error"}}).encode())
                if step == "429":
                    return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
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
                text = server.answer
                self._send(200, json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": server.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()),
                              "total_tokens": 5 + len(text.split())}}).encode())

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
