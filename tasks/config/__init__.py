"""Every setting of every flow, defined once.

The command lines (flags and `--help` from the fields), the flows' parameters (the Prefect UI
renders them as forms and masks the store URL), deployments and Python calls all build these
models, so a bad value gets the same one-paragraph message wherever it comes from (`base.py`).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import NonNegativeInt, PositiveInt, SecretStr, ValidationError, field_validator, model_validator

from tasks.config.base import Config, setting
from tasks.prompts import question_templates
from tasks.sandbox import LAYERS
from tasks.store.models import MIN_LEASE_SECONDS
from tasks.store.urls import check_store_url

DEFAULT_RUN = "gsm8k-test"
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
EXPORT_SUFFIXES = ("", ".jsonl", ".parquet")
PROMPT_TOKENS = 2048  # room for the prompt in a started server's context (`SamplingConfig.context_tokens`)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# Settings several configs share; each config gives the default (`store: StoreUrl = None`).
StoreUrl = Annotated[SecretStr | None, setting(
    help="work store: mongodb://..., mongodb+srv://... or sqlite:///PATH (default: env MONGODB_URI, else "
    "sqlite:///./fleetgen.db); a secret, shown masked", metavar="URL")]
RunName = Annotated[str, setting(help="run name", metavar="NAME", min_length=1)]
MaxRounds = Annotated[int, setting(help="refine rounds at most: stages 1..R after the first attempt", metavar="R",
                                   ge=0)]
TextsUrl = Annotated[str | None, setting(
    help="where answers' long texts (response, reasoning trace, transcript) are kept as shards instead of in the "
    "store: a folder, hf://datasets/<user>/<repo>, s3://bucket/prefix, gs://bucket/prefix (credentials from the "
    "environment); readers default to where the run's workers wrote them", metavar="URL", min_length=1)]
JsonPath = Annotated[str | None, setting(help="write the metrics as JSON here, and a PNG chart beside it",
                                         flag="json", metavar="PATH")]


MaybePath = TypeVar("MaybePath", str, str | None)


def _folder_exists(path: MaybePath) -> MaybePath:
    if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
        raise ValueError(f"cannot write {path}: its folder does not exist")
    return path


def name_list(value: str, known: tuple[str, ...], what: str) -> str:
    """A setting naming some of `known`: all, none, or a comma list (spaces dropped)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names in (["all"], ["none"]):
        return names[0]
    if unknown := [name for name in names if name not in known]:
        raise ValueError(f"unknown {what} {', '.join(unknown)}: use all, none, or a comma list of {', '.join(known)}")
    return ",".join(names) or "none"


def named(value: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """The names a `name_list` setting stands for."""
    return known if value == "all" else () if value == "none" else tuple(value.split(","))


class StoreConfig(Config):
    """Where the work is."""

    store: StoreUrl = None

    @field_validator("store")
    @classmethod
    def _known_store(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            check_store_url(url.get_secret_value())
        return url


class RunConfig(StoreConfig):
    """What every flow takes: where the work is, and which run."""

    run: RunName = DEFAULT_RUN


class ModelConfig(Config):
    """Which model to load, and how."""

    title: ClassVar[str] = "model settings"
    model: str = setting(DEFAULT_MODEL, "a local folder (save_pretrained) or a hub id", metavar="PATH_OR_HUB_ID")
    adapter: str | None = setting(None, "a PEFT LoRA adapter folder to apply to the model", metavar="PATH")
    merge_adapter: bool = setting(False, "merge the adapter into the weights (faster; not with quantization)")
    quantization: Literal["none", "4bit", "8bit"] = setting(
        "none", "bitsandbytes: 4bit = nf4, double quantization, fp16 compute; 8bit (CUDA only)")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = setting(
        "auto", "weights dtype; auto = bfloat16 on GPUs that have it, float16 on others (T4), float32 on CPU")

    @model_validator(mode="after")
    def _merge_needs_full_weights(self) -> Self:
        if self.merge_adapter and self.quantization != "none":
            raise ValueError("--merge-adapter cannot merge into a quantized model: drop --merge-adapter (the adapter "
                             "still applies) or use --quantization none")
        return self


class SamplingConfig(Config):
    """How to sample answers."""

    title: ClassVar[str] = "sampling settings"
    max_new_tokens: PositiveInt = setting(512, "tokens generated per answer at most", metavar="T")
    temperature: float = setting(0.0, "0 = greedy", metavar="X", ge=0)
    top_p: float = setting(1.0, "nucleus sampling when temperature > 0", metavar="P", gt=0, le=1)
    repetition_penalty: float = setting(1.0, "1 = none", metavar="R", gt=0)
    seed: int = setting(0, "each sample is drawn with its own seed made from S and the sample (question, sample, "
                           "stage), recorded with it: hf-static, vllm and openai honour it, hf does not", metavar="S")
    thinking: Literal["auto", "on", "off"] = setting(
        "auto", "reasoning models: on/off sets the chat template's enable_thinking (servers get it as "
                "chat_template_kwargs); auto leaves the template's default. A trace is stored apart from the answer, "
                "and graded never; with on, an answer without --thinking-marker is a trace cut off (no answer)")
    thinking_marker: str = setting("</think>", "the text that ends a reasoning trace", metavar="TEXT", min_length=1)
    thinking_budget: PositiveInt | None = setting(
        None, "budget forcing: a trace that reaches N tokens unended is closed (the marker and 'The final answer "
              "is \\boxed{') and the answer goes on for at most --answer-budget tokens (--max-new-tokens does "
              "not apply)", metavar="N")
    answer_budget: PositiveInt = setting(1024, "with --thinking-budget: tokens of the answer after the trace at most",
                                         metavar="M")

    def context_tokens(self, longest_prompt: int = 0) -> int:
        """The context a server is started with (`{max_model_len}`): the longest answer these settings
        allow (with budget forcing, both budgets) and room for the prompt: the run's longest prompt
        where it was measured, at least PROMPT_TOKENS (a refine round's prompts come later); at
        least 4,096."""
        longest = self.thinking_budget + self.answer_budget if self.thinking_budget else self.max_new_tokens
        return max(4096, max(PROMPT_TOKENS, longest_prompt) + longest)

    @model_validator(mode="after")
    def _budget_needs_thinking(self) -> Self:
        if self.thinking_budget is not None and self.thinking == "off":
            raise ValueError("--thinking-budget limits a reasoning trace, but --thinking off asks for none: drop one")
        return self


DEFAULT_SERVE_COMMAND = "vllm serve {model} --port {port} --dtype {dtype} --max-model-len {max_model_len}"


class EngineConfig(Config):
    """How answers are generated."""

    title: ClassVar[str] = "engine settings"
    name: Literal["auto", "hf-static", "hf", "openai", "vllm"] = setting(
        "auto", "auto: vllm where it is installed and the devices are CUDA GPUs (or --serve-command is given), openai "
                "for --api-base, else hf-static; hf-static: transformers' model.generate on length-sorted batches; "
                "hf: transformers' continuous batching; openai: any OpenAI-compatible server (--api-base); vllm: one "
                "server per GPU started by the worker (--serve-command)", flag="engine")
    max_in_flight: PositiveInt | None = setting(
        None, "hf, openai, vllm: answers generated at once per device (default: hf 8 on a CPU, 64 on a GPU; "
        "--concurrency for the servers)", metavar="N")
    api_base: str | None = setting(None, "openai: the server's base URL, several comma-separated (one device "
                                         "thread each), e.g. http://127.0.0.1:8000/v1", metavar="URL[,URL]")
    api_key_env: str = setting("OPENAI_API_KEY", "openai, vllm: the environment variable holding the API key (never "
                                                 "shown, logged or stored); a server that needs none takes none",
                               metavar="NAME")
    concurrency: PositiveInt = setting(16, "openai, vllm: requests in flight per endpoint", metavar="N")
    request_timeout: float = setting(600.0, "openai, vllm: seconds one request may take (then retried)", metavar="S",
                                     gt=0)
    serve_command: str = setting(
        DEFAULT_SERVE_COMMAND, "vllm: the command starting one OpenAI-compatible server per device; {model}, {port}, "
        "{dtype}, {device} and {max_model_len} (the longest answer the sampling settings allow + the runs' longest "
        "prompt to answer, measured with the model's tokenizer, at least 2,048; at least 4,096 in all) are filled in",
        metavar="TEMPLATE")
    serve_timeout: float = setting(900.0, "vllm: seconds a server may take to become healthy", metavar="S", gt=0)
    compile: bool = setting(False, "hf-static (also where --engine auto picks it): a static KV cache and a compiled "
                                   "decode step (torch.compile; CUDA graphs on a GPU), batches padded to --batch-size "
                                   "and the cache sized in steps of 512 tokens, so each size compiles once (its first "
                                   "batch waits for it, and runs alone among the devices); hf: its batching steps "
                                   "compiled, with CUDA graphs on a GPU, one device per worker. Measured slower on a "
                                   "CPU; not yet measured on a GPU")

    @model_validator(mode="after")
    def _engine_needs(self) -> Self:
        if self.name == "openai" and not self.api_base:
            raise ValueError("--engine openai needs --api-base, the server's URL (e.g. http://127.0.0.1:8000/v1)")
        if self.name not in ("openai", "auto") and self.api_base:
            raise ValueError("--api-base is for --engine openai (--engine vllm starts its own servers)")
        if self.compile and self.name not in ("hf-static", "hf", "auto"):
            raise ValueError(f"--compile is for the HF engines (hf-static, hf), not {self.name}: drop --compile")
        if self.name == "vllm" and not {"{port}", "{model}"} <= set(re.findall(r"\{\w+\}", self.serve_command)):
            raise ValueError("--serve-command must contain {model} and {port} (each server gets its own port)")
        return self

    def endpoints(self) -> list[str]:
        return [url.strip().rstrip("/") for url in (self.api_base or "").split(",") if url.strip()]


CODE_PROMPT = "code"


class WorkerConfig(RunConfig):
    """The worker: which model, how to sample, on which devices, how much to claim."""

    title: ClassVar[str] = "worker settings"
    run: str = setting(DEFAULT_RUN, "run name, or several drained in order: a,b,c or a pattern such as 'suite-*'",
                       metavar="NAME", min_length=1)
    model: ModelConfig = ModelConfig()
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    devices: str = setting("auto", "one model copy per listed device: auto (every visible GPU, else cpu), "
                                   "cuda:0,cuda:1, cpu, cpu,cpu", metavar="LIST")
    batch_size: PositiveInt = setting(16, "items claimed and generated together (hf, openai, vllm: claimed at least as "
                                          "many as they keep in flight)", metavar="B")
    cpu_threads: PositiveInt | None = setting(
        None, "torch threads of the worker's CPU model copies (default: this machine's cores / its CPU copies; "
              "with several CPU workers on one machine give each cores / all their copies)", metavar="N")
    prompt: str = setting("step_by_step", "a question template in prompts/ (a .txt file with a {question} "
                                          "placeholder)", metavar="NAME")
    extract: Literal["regex", "llm"] = setting(
        "regex", "llm: a second pass with prompts/extract.txt for responses with no parsable answer")
    code_execution: bool = setting(False, "run each ```python block the model writes in a sandbox and let it go on "
                                          "from the output (with the `code` prompt unless --prompt names another)")
    max_code_executions: PositiveInt = setting(6, "code executions per item at most; the answer after them is final",
                                               metavar="N")
    code_timeout: float = setting(10.0, "wall-time (and CPU-time) limit of one code execution, in seconds",
                                  metavar="S", gt=0, le=600)
    sandbox_layers: str = setting("unprivileged-user", "sandbox layers without which the worker runs no code: a comma "
                                  f"list of {', '.join(LAYERS)}; or all, or none", metavar="LIST")
    worker: str | None = setting(None, "this worker's name in the store and the UI (default: host-pid)",
                                 metavar="NAME")
    lease_seconds: float = setting(600.0, "how long claimed items stay reserved without a heartbeat; a dead "
                                          "worker's items are taken over after this (at least 10)", metavar="S",
                                   ge=MIN_LEASE_SECONDS)
    max_attempts: PositiveInt = setting(3, "attempts per item before it is marked failed (a lease that expires "
                                           "because its worker died counts as one)", metavar="N")
    grace_seconds: float = setting(20.0, "on SIGTERM/SIGINT or at --max-runtime: how long answers being generated "
                                         "may take to finish before they are given back too", metavar="S", ge=0)
    checkpoint_seconds: float = setting(
        120.0, "streaming engines (openai, vllm): answers generated for this long are kept with their items this "
               "often, and at once when given back (SIGTERM's grace over), so the next worker continues them "
               "instead of starting over; 0 = never", metavar="S", ge=0)
    max_runtime: float | None = setting(None, "stop claiming when less time is left than a batch takes, e.g. 11h30m "
                                              "for a 12-hour notebook (also 90m, 3600 seconds)", metavar="DURATION",
                                        gt=0)
    idle_exit: float = setting(0.0, "when the run(s) are finished, keep looking for new work this long (e.g. a "
                                    "refine round queued later) before exiting", metavar="S", ge=0)
    texts: TextsUrl = None
    shard_seconds: float | None = setting(
        None, "with --texts: a shard of this worker's answers is written this often (and when it stops or runs out of "
              "work); its answers are done in the store only once it is written (default: 60, on hf:// 1800: 50 "
              "workers stay under the hub's 128 commits an hour)", metavar="S", ge=1)

    @property
    def shard_window(self) -> float:
        """--shard-seconds, or the default for --texts' storage."""
        from tasks.texts import default_shard_seconds

        return self.shard_seconds or default_shard_seconds(self.texts or "")

    @field_validator("max_runtime", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", value)
        if not value.strip() or not match:
            raise ValueError(f"{value!r} is not a duration: use e.g. 11h30m, 90m or 3600")
        hours, minutes, seconds = (float(part or 0) for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds

    @field_validator("sandbox_layers")
    @classmethod
    def _layer_list(cls, layers: str) -> str:
        return name_list(layers, LAYERS, "sandbox layer(s)")

    @property
    def required_sandbox_layers(self) -> tuple[str, ...]:
        """The layers without which no code runs (--sandbox-layers)."""
        return named(self.sandbox_layers, LAYERS)

    @field_validator("devices")
    @classmethod
    def _device_list(cls, devices: str) -> str:
        names = [name.strip() for name in devices.split(",") if name.strip()]
        if not names:
            raise ValueError("no device named: use auto, cpu, or a comma list such as cuda:0,cuda:1")
        for name in names:
            if name == "cuda":
                raise ValueError("name each GPU with its index, e.g. cuda:0,cuda:1 (or auto)")
            if name not in ("auto", "cpu") and not re.fullmatch(r"cuda:\d+", name) or name == "auto" and len(names) > 1:
                raise ValueError(f"unknown device {name!r}: use auto, cpu, or cuda:N (comma separated)")
        return ",".join(names)

    @model_validator(mode="before")
    @classmethod
    def _code_prompt(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("code_execution") and "prompt" not in values:
            return {**values, "prompt": CODE_PROMPT}
        return values

    @model_validator(mode="after")
    def _extract_on_static(self) -> Self:
        if self.extract == "llm" and self.engine.name not in ("hf-static", "auto"):
            raise ValueError("--extract llm (a second pass on the same model copy) runs with --engine hf-static only")
        if self.prompt == CODE_PROMPT and not self.code_execution:
            raise ValueError("--prompt code asks the model to write code for a sandbox to run: add --code-execution")
        if self.code_execution and self.extract == "llm":
            raise ValueError("--extract llm cannot be combined with --code-execution (its second pass would run code "
                             "too); the code prompt asks for a \\boxed{} answer, which the grader reads")
        return self

    @field_validator("prompt")
    @classmethod
    def _question_template(cls, name: str) -> str:
        if name not in question_templates():
            raise ValueError(f"not a question template in prompts/: use one of {', '.join(question_templates())}, "
                             "or add a .txt file there with a {question} placeholder")
        return name

    @property
    def worker_name(self) -> str:
        """The worker's name: as given, else this machine's host name and process id."""
        return self.worker or default_worker_name()

    @property
    def claim_size(self) -> int:
        """Items claimed (and written) at once: --batch-size, and for the engines that keep requests in
        flight (hf, openai, vllm) at least as many as they keep (--max-in-flight, else the servers'
        --concurrency): one claim fills the engine's batch, with fewer store operations."""
        if self.engine.name not in ("hf", "openai", "vllm"):
            return self.batch_size
        in_flight = self.engine.max_in_flight or (self.engine.concurrency if self.engine.name != "hf" else 0)
        return max(self.batch_size, in_flight)

    @property
    def poll_seconds(self) -> float:
        """How often an idle device looks for work while other workers hold leases."""
        return max(0.2, min(self.lease_seconds / 4, 15.0))


class SeedConfig(RunConfig):
    """Which dataset to seed a run with."""

    title: ClassVar[str] = "seed settings"
    dataset: str = setting("gsm8k", "gsm8k (the shipped copy), a JSONL file path, or a hub id owner/name[:config]",
                           metavar="NAME|PATH|HUB_ID")
    split: str = setting("test", "split to load: train|test for gsm8k and hub ids", metavar="SPLIT")
    limit: PositiveInt | None = setting(None, "only the first N rows", metavar="N")
    samples: PositiveInt = setting(1, "samples per question (for maj@K and pass@k; with --until-correct, at most K)",
                                   metavar="K", also="max-samples")
    solutions: bool = setting(False, "keep each question's reference solution with its items (for the worker's "
                                     "--prompt masked)")
    until_correct: PositiveInt | None = setting(
        None, "stop sampling a question once N of its answers are correct: its samples are answered one after "
              "another and the rest cancelled, so compute goes to the hard questions (--max-samples K: at most K)",
        metavar="N")
    question_field: str = setting("question", "field holding the question", metavar="F")
    answer_field: str = setting("answer", "field holding the reference; text after '####' is taken when present",
                                metavar="F")
    response_field: str | None = setting(None, "field holding a response generated elsewhere: items are stored "
                                               "done with it, graded", metavar="F")
    subset: PositiveInt | None = setting(None, "a deterministic subset of N questions, every level and subject (or "
                                               "type) in proportion; MATH's 500 is the common MATH-500", metavar="N")
    data_dir: str | None = setting(None, "folder holding the benchmarks not shipped here (gsm-hard, asdiv, mawps) "
                                         "as <name>/test.jsonl, e.g. microsoft/ToRA's src/data", metavar="DIR")
    suite: Literal["math-word-problems"] | None = setting(
        None, "seed every benchmark of a suite, each as the run <run-prefix>-<benchmark>: math-word-problems = "
              "gsm8k, math, gsm-hard, svamp, asdiv, mawps")
    run_prefix: str | None = setting(None, "with --suite: the runs' common prefix (default: the suite's name)",
                                     metavar="NAME")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.until_correct is not None and (self.samples < 2 or self.response_field):
            raise ValueError("--until-correct stops drawing samples of a question: give --max-samples K (more than 1), "
                             "and no --response-field")
        if self.response_field and self.samples != 1:
            raise ValueError("--samples cannot be combined with --response-field: each row's response is one sample "
                             "(rows sharing an 'id' become successive samples)")
        if self.limit and self.subset:
            raise ValueError("--limit (the first N rows) and --subset (a spread of N rows) exclude each other")
        if self.suite and {"dataset", "run", "response_field"} & self.model_fields_set:
            raise ValueError("--suite seeds its own benchmarks as runs named <run-prefix>-<benchmark>: drop --dataset, "
                             "--run and --response-field, or drop --suite")
        if self.run_prefix and not self.suite:
            raise ValueError("--run-prefix names the runs of a --suite; without --suite use --run")
        return self

    def planned_runs(self) -> list[tuple[str, str]]:
        """(run, dataset) for every run this seeding makes: one, or one per benchmark of the suite."""
        if self.suite:
            from tasks.benchmarks import SUITES

            return [(f"{self.run_prefix or self.suite}-{name}", name) for name in SUITES[self.suite]]
        return [(self.run, self.dataset)]


class RefineConfig(RunConfig):
    title: ClassVar[str] = "refine settings"
    max_rounds: MaxRounds = 2
    texts: TextsUrl = None


class JudgeConfig(RunConfig):
    """An LLM judge for the answers the rule-based grader cannot read."""

    title: ClassVar[str] = "judge settings"
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=8)
    devices: str = setting("auto", "the device of the judge's one model copy: auto (the first GPU, else cpu), cpu, "
                                   "cuda:N", metavar="DEVICE")
    batch_size: PositiveInt = setting(16, "answers judged together", metavar="B")
    texts: TextsUrl = None


class DecontaminateConfig(JudgeConfig):
    """Which test sets a run is checked against, and how (the judge settings confirm embedding matches)."""

    title: ClassVar[str] = "decontamination settings"
    ngram: PositiveInt = setting(8, "words per n-gram: a question sharing any run of N words with a test question "
                                    "is contaminated (open-r1's 8)", metavar="N")
    answers: bool = setting(False, "also check the run's answers (reasoning traces included) for n-grams of test "
                                   "questions")
    test_sets: str = setting("all", "benchmarks whose test split is checked: all (those shipped or in --data-dir), "
                                    "none (--against only), or a comma list such as gsm8k,math", metavar="LIST")
    against: str | None = setting(None, "more test sets: JSONL files with a question field, comma separated",
                                  metavar="FILES")
    data_dir: str | None = setting(None, "folder holding the test splits not shipped here (gsm-hard, asdiv, mawps) "
                                         "as <name>/test.jsonl", metavar="DIR")
    embedding_model: str | None = setting(
        None, "also the nearest test questions by sentence embedding (a local folder or a hub id, e.g. "
              "sentence-transformers/multi-qa-MiniLM-L6-cos-v1), each confirmed by the judge --model asked "
              "\"same problem?\" both ways", metavar="PATH_OR_HUB_ID")
    top_k: PositiveInt = setting(1, "with --embedding-model: nearest test questions per question the judge is "
                                    "asked about", metavar="K")

    @field_validator("test_sets")
    @classmethod
    def _benchmarks(cls, names: str) -> str:
        from tasks.benchmarks import ADAPTERS

        return name_list(names, tuple(ADAPTERS), "benchmark(s)")

    @property
    def benchmarks(self) -> tuple[str, ...]:
        """The benchmarks whose test split is checked (--test-sets)."""
        from tasks.benchmarks import ADAPTERS

        return named(self.test_sets, tuple(ADAPTERS))

    @property
    def against_files(self) -> list[str]:
        return [path.strip() for path in (self.against or "").split(",") if path.strip()]


class EvaluateConfig(RunConfig):
    title: ClassVar[str] = "evaluate settings"
    runs: str | None = setting(None, "several runs in one table, one row per run (benchmark): a,b,c or a pattern "
                                     "such as 'suite-*' (instead of --run)", metavar="RUNS")
    json_path: JsonPath = None

    @field_validator("json_path")
    @classmethod
    def _writable(cls, path: str | None) -> str | None:
        return _folder_exists(path)


class ExportConfig(RunConfig):
    title: ClassVar[str] = "export settings"
    out: str = setting(..., "x.jsonl, x.parquet, or a folder (no extension) for a Hugging Face datasets copy",
                       metavar="PATH")
    format: Literal["rows", "sft", "dpo"] = setting(
        "rows", "rows; sft: chat messages of correct answers; dpo: pairs of a correct (chosen) and a wrong "
                "(rejected) answer of the same question")
    only_correct: bool = setting(False, "rows: only correct answers (sft always is)")
    stage: NonNegativeInt | None = setting(None, "only this stage (0 = first attempt)", metavar="S")
    per_question: PositiveInt = setting(1, "sft: up to N distinct correct responses per question, fewest tokens "
                                           "first", metavar="N")
    refine_conversations: bool = setting(False, "sft: also the refine rounds' correct answers, each as the "
                                                "conversation it answered (question, wrong attempt, retry prompt)")
    max_rows: PositiveInt | None = setting(None, "sft/dpo: at most this many rows, taken evenly across questions",
                                           metavar="N")
    max_chars: PositiveInt | None = setting(None, "sft/dpo: drop answers longer than this many characters",
                                            metavar="N")
    max_repeated_lines: PositiveInt = setting(4, "sft/dpo: drop answers repeating a line more often than this",
                                              metavar="N")
    similarity: float = setting(0.95, "sft/dpo: drop answers at least this similar to one kept for the question "
                                      "(1 keeps all but identical ones)", metavar="X", gt=0, le=1)
    push_to_hub_repo: str | None = setting(None, "also upload to the Hugging Face hub as this dataset repo",
                                           flag="push-to-hub", metavar="REPO")
    decontaminate: bool = setting(False, "sft/dpo: first check the run's questions against every available test "
                                         "split (word 8-grams, as flows/decontaminate.py) and keep the result")
    keep_contaminated: bool = setting(False, "sft/dpo: keep the questions a decontamination check found in a test "
                                             "split (dropped by default)")
    allow_test_split: bool = setting(False, "sft/dpo: export a run seeded from a test split (refused by default: "
                                            "training on a test set makes its scores meaningless)")
    texts: TextsUrl = None

    @field_validator("out")
    @classmethod
    def _known_format(cls, out: str) -> str:
        if Path(out).suffix not in EXPORT_SUFFIXES:
            raise ValueError("cannot tell the format: use a .jsonl or .parquet file, or a folder name (no extension) "
                             "for a Hugging Face datasets folder")
        return _folder_exists(out)


class StatusConfig(StoreConfig):
    title: ClassVar[str] = "status settings"
    run: str | None = setting(None, "one run's counts by stage and worker (default: every run, a line each)",
                              metavar="NAME", min_length=1)
    json_output: bool = setting(False, "print one JSON object (last line of stdout)", flag="json")
    texts: TextsUrl = None


class TextsConfig(RunConfig):
    """A run's texts kept in shards: what they weigh, and the orphan rows to drop."""

    title: ClassVar[str] = "texts settings"
    texts: TextsUrl = None
    drop_orphans: bool = setting(False, "rewrite the shards holding rows no done answer points at (answers the store "
                                        "refused: a worker killed between its shard and its store write, or a lease "
                                        "taken over) without them")
    older_than: float = setting(3600.0, "only shards written longer ago than this: a younger one's answers may be "
                                        "being written to the store", metavar="S", ge=60)
    json_output: bool = setting(False, "print one JSON object (last line of stdout)", flag="json")


class ServeConfig(Config):
    """Refine and evaluate on a schedule; the store comes from each run's MONGODB_URI, never from Prefect."""

    title: ClassVar[str] = "serve settings"
    run: RunName = DEFAULT_RUN
    max_rounds: MaxRounds = 2
    refine_cron: str = setting("*/30 * * * *", "when refine runs (cron; default every 30 minutes)", metavar="CRON")
    evaluate_cron: str = setting("15 * * * *", "when evaluate runs (cron; default hourly at :15)", metavar="CRON")
    json_path: JsonPath = None

    @field_validator("refine_cron", "evaluate_cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValidationError:
            raise ValueError("not a cron schedule (five fields, e.g. '*/30 * * * *')") from None
        return cron
