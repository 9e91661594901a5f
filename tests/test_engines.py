"""The Hugging Face engines with tiny local models: templates, padding, new tokens only, sampling
settings that really reach generation, adapters, load errors, splitting failed batches; the
`hf` continuous-batching engine answering as `hf-static` does, each request its own length; and
`hf-static --compile` and `hf --compile` answering as without it, compiling once."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tasks.config import EngineConfig, ModelConfig, SamplingConfig
from tasks.config.base import ConfigError
from tasks.engines import Abandoned, Generation, Request, UnanswerableItem, answer_all, create_engine
from tasks.engines.devices import device_labels, engine_devices, resolve_devices, worker_devices
from tasks.engines.hf_continuous import HFContinuousEngine
from tasks.engines.hf_model import seeded_processors
from tasks.engines.hf_static import HFStaticEngine, generate_splitting
from tasks.errors import UserError

GREEDY = SamplingConfig(max_new_tokens=8)


def engine(model: Path, **settings) -> HFStaticEngine:
    return HFStaticEngine(ModelConfig(model=str(model), **settings), device="cpu")


def test_chat_template_and_left_padding_with_pad_fallback(tiny_model: Path) -> None:
    model = create_engine(engine=EngineConfig(), model=ModelConfig(model=str(tiny_model)), device="cpu", label="cpu#0",
                          batch_size=4)
    assert (model.name, model.label) == ("hf-static", "cpu#0")
    assert model.chat and model.tokenizer.padding_side == "left"
    assert model.tokenizer.pad_token == "</s>"
    assert model.prompt_text("What is 2+2?") == "<s>user: What is 2+2?</s><s>assistant: "
    short, long = model.generate(["Hi", "A much longer question about apples and pears?"], GREEDY)
    assert 1 <= short.tokens <= 8 and 1 <= long.tokens <= 8
    assert "assistant" not in short.text and "apples" not in long.text  # only new tokens are decoded
    assert {short.finish_reason, long.finish_reason} <= {"stop", "length"}
    assert (short.finish_reason == "length") == (short.tokens == 8)


def test_batched_greedy_matches_one_by_one(tiny_plain_model: Path, tiny_model: Path) -> None:
    model = engine(tiny_plain_model)
    assert not model.chat and model.prompt_text("Q") == "Q"
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}]
    assert model.prompt_text(turns) == "Q\n\nA\n\nR"
    prompts = ["Tom has 3 apples.", "Janet's ducks lay 16 eggs per day and she eats three."]
    batched = model.generate(prompts, GREEDY)
    alone = [model.generate([prompt], GREEDY)[0] for prompt in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]
    encoded = model.encode_all(prompts)
    assert [g.text for g in model.generate(prompts, GREEDY, tokens=encoded)] == [g.text for g in alone]
    for chat_or_not in (model, engine(tiny_model)):  # one call of the tokenizer reads each prompt as alone
        assert chat_or_not.encode_all(prompts + [turns]) == [chat_or_not.encode(p) for p in prompts + [turns]]


def test_temperature_and_top_p_reach_generation(tiny_model: Path) -> None:
    model = engine(tiny_model)
    prompt, tokens = ["Count the eggs"], 16
    greedy = model.generate(prompt, SamplingConfig(max_new_tokens=tokens))[0].text
    torch.manual_seed(1)
    hot = [g.text for g in model.generate(prompt * 2, SamplingConfig(max_new_tokens=tokens, temperature=1.5))]
    assert hot[0] != hot[1] and greedy not in hot  # two draws of one prompt differ, and differ from greedy
    torch.manual_seed(1)
    assert [g.text for g in model.generate(prompt * 2, SamplingConfig(max_new_tokens=tokens, temperature=1.5))] == hot
    # a nucleus so small that it keeps only the likeliest token is greedy again, whatever the temperature
    narrow = SamplingConfig(max_new_tokens=tokens, temperature=1.5, top_p=1e-6)
    assert [g.text for g in model.generate(prompt * 2, narrow)] == [greedy, greedy]


def test_adapter_changes_outputs_and_merges(tiny_model: Path, tiny_adapter: Path) -> None:
    prompts, sampling = ["How many eggs are left?"], SamplingConfig(max_new_tokens=16)
    base = engine(tiny_model).generate(prompts, sampling)
    adapted = engine(tiny_model, adapter=str(tiny_adapter))
    merged = engine(tiny_model, adapter=str(tiny_adapter), merge_adapter=True)
    assert type(adapted.model).__name__.startswith("PeftModel") and type(merged.model).__name__ == "LlamaForCausalLM"
    with_adapter = adapted.generate(prompts, sampling)
    assert with_adapter[0].text != base[0].text
    assert merged.generate(prompts, sampling)[0].text == with_adapter[0].text


def test_load_errors_are_user_errors(tmp_path: Path, tiny_model: Path) -> None:
    from bench.standins import build_adapter, build_model

    with pytest.raises(UserError, match="Cannot load model .*local folder holding config.json"):
        engine(tmp_path / "nowhere")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        engine(tiny_model, quantization="4bit")
    wider = build_model(tmp_path / "wider", chat=True, hidden=64)
    misfit = build_adapter(wider, tmp_path / "misfit")
    with pytest.raises(UserError, match="Cannot apply the adapter"):
        engine(tiny_model, adapter=str(misfit))


def test_failing_batches_are_split_before_giving_up(tiny_model: Path, monkeypatch) -> None:
    model = engine(tiny_model)
    real, sizes = model.generate, []

    def fails_on_big_batches_and_poison(prompts, sampling, *, limits, stop, seeds, abandoned, tokens, pad_to):
        sizes.append(len(prompts))
        if len(prompts) > 2 or "poison" in prompts:
            raise RuntimeError("CUDA out of memory (simulated)")
        assert tokens == model.encode_all(prompts)  # each half keeps its prompts' tokens
        return real(prompts, sampling, limits=limits, stop=stop, seeds=seeds, abandoned=abandoned, tokens=tokens,
                    pad_to=pad_to)

    monkeypatch.setattr(model, "generate", fails_on_big_batches_and_poison)
    texts = ["a", "b", "c", "poison", "e", "f", "g", "h"]
    requests = [Request(key=text, prompt=text, seed=n) for n, text in enumerate(texts)]
    tokens = dict(zip(texts, model.encode_all(texts)))
    results = generate_splitting(model, requests, SamplingConfig(max_new_tokens=8, temperature=1.0), tokens)
    assert sizes[0] == 8 and 4 in sizes and 1 in sizes
    assert [type(r) for r in results] == [Generation] * 3 + [RuntimeError] + [Generation] * 4
    alone = real(["h"], SamplingConfig(max_new_tokens=8, temperature=1.0), seeds=[7])[0]
    assert (results[-1].text, results[-1].seed) == (alone.text, 7)  # each half kept its requests' own seeds


def test_seeded_draws_follow_the_warped_distribution() -> None:
    """Each row's draw (Gumbel-max with its own generator, then greedy's argmax) is a draw from the
    softmax of the scores after temperature and top-p, as transformers' sampling makes it."""
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    sampling = SamplingConfig(temperature=0.8, top_p=0.9)
    counts = torch.zeros(5)
    for seed in range(4000):
        processed = scores
        for processor in seeded_processors(sampling, [seed], "cpu"):
            processed = processor(None, processed)
        counts[processed.argmax()] += 1
    warped = torch.softmax(scores / 0.8, dim=-1)[0]
    kept = torch.cumsum(warped, 0) - warped < 0.9  # the nucleus: tokens until 0.9 of the mass is reached
    expected = torch.where(kept, warped, 0.0) / warped[kept].sum()
    assert counts[~kept].sum() == 0
    assert torch.allclose(counts / counts.sum(), expected, atol=0.025)


def test_a_sample_draws_the_same_answer_in_any_batch(tiny_model: Path) -> None:
    """A request's seed decides its answer, whatever else shares its batch; different seeds give
    different draws of one prompt; greedy answers carry no seed."""
    model = engine(tiny_model)
    hot = SamplingConfig(max_new_tokens=16, temperature=1.0)
    question = "How many eggs are left?"
    alone = model.generate([question], hot, seeds=[11])[0]
    batched = model.generate(["A much longer question about apples, pears and plums?", question, question, "Hi"],
                             hot, seeds=[5, 12, 11, 6])
    assert (batched[2].text, batched[2].seed) == (alone.text, 11) and batched[1].text != alone.text
    assert model.generate([question], hot, seeds=[11])[0].text == alone.text
    assert model.generate([question], SamplingConfig(max_new_tokens=16), seeds=[11])[0].seed is None


def test_devices(monkeypatch) -> None:
    assert resolve_devices("cpu,cpu") == ["cpu", "cpu"] and device_labels(["cpu", "cpu"]) == ["cpu#0", "cpu#1"]
    with monkeypatch.context() as two_gpus:  # hf --compile: one copy per worker; the judge's one copy may be it
        two_gpus.setattr(torch.cuda, "device_count", lambda: 2)
        compiled = EngineConfig(name="hf", compile=True)
        assert engine_devices(compiled, "auto")[0] == ("cuda:0", "cuda:0")
        assert worker_devices(compiled, "cuda:1") == [("cuda:1", "cuda:1")]
        with pytest.raises(UserError, match=r"--devices gives 2 \(cuda:0, cuda:1\)"):
            worker_devices(compiled, "auto")
    if not torch.cuda.is_available():
        assert resolve_devices("auto") == ["cpu"]
        with pytest.raises(UserError, match="visible GPU"):
            resolve_devices("cuda:7")


def requests(count: int, lengths: list[int] | None = None) -> list[Request]:
    questions = [f"Question {n}: how many apples are left after {n} are eaten?" for n in range(count)]
    return [Request(key=str(n), prompt=question, max_new_tokens=lengths[n] if lengths else None)
            for n, question in enumerate(questions)]


def test_continuous_batching_answers_as_static_batches_do(tiny_model: Path) -> None:
    static = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu", batch_size=4)
    continuous = HFContinuousEngine(ModelConfig(model=str(tiny_model)), device="cpu", settings=EngineConfig(
        name="hf", max_in_flight=3))
    sampling = SamplingConfig(max_new_tokens=12)
    expected = [g.text for g in answer_all(static, requests(7), sampling)]
    answered = answer_all(continuous, requests(7), sampling)
    assert [g.text for g in answered] == expected  # greedy: the same tokens, whatever the batching
    assert all(isinstance(g, Generation) and 1 <= g.tokens <= 12 and g.seconds >= 0 for g in answered)
    lengths = [2, 9, 5, 12, 1, 7, 3]  # each request its own length, as in bench/engines.py
    short = answer_all(continuous, requests(7, lengths), sampling)
    assert all(g.tokens <= n and (g.finish_reason == "stop" or g.tokens == n) for g, n in zip(short, lengths))


def test_continuous_batching_cancels_what_the_worker_gave_back(tiny_model: Path) -> None:
    """A request the worker gave back (its stop's grace over) is cancelled and answered Abandoned at
    once, instead of generating its 1,500 tokens for nothing; the others go on."""
    continuous = HFContinuousEngine(ModelConfig(model=str(tiny_model)), device="cpu", settings=EngineConfig(
        name="hf", max_in_flight=4))
    kept, given_back = requests(2, [6, 1500])
    given_back = replace(given_back, abandoned=lambda: True)
    answers = answer_all(continuous, [kept, given_back], SamplingConfig(max_new_tokens=1500))
    assert isinstance(answers[0], Generation) and answers[0].tokens <= 6
    assert isinstance(answers[1], Abandoned)


@pytest.mark.parametrize("engine", ["hf-static", "hf"])
def test_a_prompt_longer_than_the_context_fails_alone_and_clearly(tiny_model: Path, engine: str) -> None:
    model = create_engine(engine=EngineConfig(name=engine), model=ModelConfig(model=str(tiny_model)), device="cpu",
                          label="cpu", batch_size=4)
    long = Request(key="long", prompt="seven apples " * 3000)  # the tiny model reads 2,048 positions
    answers = answer_all(model, [*requests(2), long], SamplingConfig(max_new_tokens=4))
    assert all(isinstance(answer, Generation) for answer in answers[:2])
    assert isinstance(answers[2], UnanswerableItem) and "reads at most 2,048" in str(answers[2])
    assert "shorten the question or use a model with a longer context" in str(answers[2])


def test_continuous_batching_uses_static_batches_for_a_repetition_penalty(tiny_model: Path, caplog) -> None:
    continuous = HFContinuousEngine(ModelConfig(model=str(tiny_model)), device="cpu",
                                    settings=EngineConfig(name="hf", max_in_flight=4))
    static = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu", batch_size=4)
    penalty = SamplingConfig(max_new_tokens=8, repetition_penalty=1.3)
    assert [g.text for g in answer_all(continuous, requests(4), penalty)] == [
        g.text for g in answer_all(static, requests(4), penalty)]
    assert "--engine hf does not honour --repetition-penalty, so this run uses hf-static" in caplog.text


def test_a_dead_batching_thread_fails_its_requests_instead_of_hanging(tiny_model: Path, monkeypatch) -> None:
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    continuous = HFContinuousEngine(ModelConfig(model=str(tiny_model)), device="cpu",
                                    settings=EngineConfig(name="hf", max_in_flight=4))
    too_big = ContinuousBatchingConfig(page_size=64, num_blocks=10**9, max_batch_tokens=1024)  # cannot be allocated
    monkeypatch.setattr(continuous, "_cache_config", lambda sampling: too_big)
    answers = answer_all(continuous, requests(4), SamplingConfig(max_new_tokens=8))
    assert len(answers) == 4 and all(isinstance(a, RuntimeError) for a in answers)  # each fails back, none hangs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (4-bit bitsandbytes)")
def test_4bit_on_cuda(tiny_model: Path) -> None:
    import bitsandbytes

    model = HFStaticEngine(ModelConfig(model=str(tiny_model), quantization="4bit"), device="cuda:0")
    modules = dict(model.model.named_modules())
    linear = {name for name, module in modules.items() if isinstance(module, torch.nn.Linear)}
    quantized = {name for name, module in modules.items() if isinstance(module, bitsandbytes.nn.Linear4bit)}
    assert quantized and linear - quantized <= {"lm_head"}  # every layer but the head really is 4-bit
    assert next(model.model.parameters()).device.type == "cuda"
    assert model.generate(["How many?"], GREEDY)[0].tokens >= 1


def test_engine_auto_picks_vllm_only_with_vllm_and_gpus_and_says_why(monkeypatch) -> None:
    import importlib.util

    import torch

    from tasks.engines.devices import choose_engine

    def chosen(devices: str = "auto", **settings) -> tuple[str, str]:
        engine, why = choose_engine(EngineConfig(**settings), devices=devices)
        return engine.name, why

    assert chosen() == ("hf-static", "engine hf-static (--engine auto: no CUDA GPU among the devices)")
    assert chosen(api_base="http://127.0.0.1:8000/v1")[0] == "openai"
    assert chosen(serve_command="my-server --model {model} --port {port}")[0] == "vllm"
    assert chosen(name="hf") == ("hf", "engine hf")  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    installed = {"vllm": None}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: installed.get(name, object()))
    assert "vLLM is not installed here" in chosen()[1]
    installed["vllm"] = object()
    assert chosen() == ("vllm", "engine vllm (--engine auto: vLLM is installed and the devices are CUDA GPUs)")
    assert chosen(compile=True) == ("vllm", "engine vllm (--engine auto: vLLM is installed and the devices are CUDA "
                                            "GPUs; --compile is for the HF engines, so it does not apply)")
    assert chosen("cuda:0,cpu")[0] == "hf-static"  # a CPU copy among the devices
    engine, why = choose_engine(EngineConfig(), devices="auto", static_only=True)
    assert engine.name == "hf-static" and "--extract llm" in why


def test_vllm_servers_get_the_dtype_and_attention_their_gpu_runs(monkeypatch) -> None:
    import torch

    from tasks.engines.devices import dtype_name
    from tasks.engines.served import server_env

    capabilities = {0: (7, 5), 1: (9, 0)}  # a T4, an H100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capabilities[index])
    assert [dtype_name("auto", device) for device in ("cuda:0", "cuda:1", "cpu")] == ["float16", "bfloat16", "float32"]
    assert dtype_name("float32", "cuda:0") == "float32"  # as asked
    assert server_env("cuda:0") == {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN"}
    assert server_env("cuda:1") == {} and server_env("cpu") == {}


def test_a_compiled_model_answers_as_the_eager_one_and_compiles_once_per_cache_size(tiny_model: Path,
                                                                                    caplog) -> None:
    """--compile: a static cache and a compiled decode step, every batch padded to the batch size:
    greedy and seeded answers as the eager model's; later batches of other sizes and prompt lengths
    within one cache step compile nothing more; a batch that runs out of memory is retried in
    halves padded to half the rows."""
    from torch._dynamo.utils import counters

    eager = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu", batch_size=4)
    compiled = create_engine(engine=EngineConfig(compile=True), model=ModelConfig(model=str(tiny_model)),
                             device="cpu", label="cpu#0", batch_size=4)
    assert compiled.name == "hf-static" and compiled.compiled_batch == 4
    assert "--compile on cpu: measured 0.24-0.33x the speed without it on a CPU" in caplog.text  # and so said
    sampling = SamplingConfig(max_new_tokens=12)
    first = compiled.generate(["Hi", "How many eggs?"], sampling)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the decode step was compiled
    assert [g.text for g in answer_all(compiled, requests(7), sampling)] == [  # batches of 4, then 3 padded
        g.text for g in answer_all(eager, requests(7), sampling)]
    assert [g.text for g in first] == [g.text for g in eager.generate(["Hi", "How many eggs?"], sampling)]
    hot = SamplingConfig(max_new_tokens=12, temperature=1.0)
    seeded = compiled.generate(["How many eggs?", "Hi"], hot, seeds=[11, 12])
    assert [(g.text, g.seed) for g in seeded] == [
        (g.text, g.seed) for g in eager.generate(["How many eggs?", "Hi"], hot, seeds=[11, 12])]
    assert counters["stats"]["unique_graphs"] == graphs
    shapes, generate = [], compiled.model.generate

    def short_of_memory(**kwargs):  # as a GPU that holds two rows at most
        shapes.append(len(kwargs["input_ids"]))
        if shapes[-1] > 2:
            raise RuntimeError("CUDA out of memory")
        return generate(**kwargs)

    compiled.model.generate = short_of_memory
    assert [g.text for g in answer_all(compiled, requests(4), sampling)] == [  # in halves, each padded to 2 rows
        g.text for g in answer_all(eager, requests(4), sampling)]
    assert shapes == [4, 2, 2]
    with pytest.raises(ConfigError, match=r"--compile is for the HF engines \(hf-static, hf\), not vllm"):
        EngineConfig(name="vllm", compile=True)


def test_compiled_copies_on_the_worker_threads_compile_one_at_a_time(tiny_model: Path) -> None:
    """--compile with two devices: a copy per device, each on its own thread, as the worker runs
    them. While a copy compiles, torch tells every thread it is compiling (one process-wide flag),
    so a batch starting on the other copy (its first step runs uncompiled) took compile-only paths
    and broke dynamo's guards (the `kernels` package's compile state, a transformers dependency,
    is one global); a batch of a shape its copy has not run yet now waits for the others' batches
    to end, and runs alone."""
    from concurrent.futures import ThreadPoolExecutor

    torch._dynamo.reset()  # every shape compiled afresh, whatever this process compiled before
    eager = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu", batch_size=4)
    running, compiling = (create_engine(engine=EngineConfig(compile=True), model=ModelConfig(model=str(tiny_model)),
                                        device="cpu", label=f"cpu#{index}", batch_size=4) for index in range(2))
    prompts = ["Hi", "How many eggs?", "Two and two?", "Add 5 and 7."]
    short, new = SamplingConfig(max_new_tokens=2), SamplingConfig(max_new_tokens=12)  # the same cache size
    expected = {rows: [g.text for g in eager.generate(prompts[:rows], new)] for rows in (2, 1, 3)}
    expected_short = [g.text for g in eager.generate(prompts, short)]
    running.generate(prompts, short)  # its shape compiled before the threads start
    compiled = threading.Event()

    def start_batches() -> list[list[str]]:  # short batches (mostly an uncompiled first step) till the other compiled
        answers: list[list[str]] = []
        while not compiled.is_set() or not answers:
            answers.append([g.text for g in running.generate(prompts, short)])
        return answers

    def compile_new_shapes() -> dict[int, list[str]]:
        torch._dynamo.config.automatic_dynamic_shapes = False  # (this thread's setting) a compile for each shape
        try:
            return {rows: [g.text for g in compiling.generate(prompts[:rows], new, pad_to=rows)] for rows in (2, 1, 3)}
        finally:
            compiled.set()

    with ThreadPoolExecutor(2) as pool:
        batches, new_shapes = pool.submit(start_batches), pool.submit(compile_new_shapes)
        assert new_shapes.result() == expected
        assert batches.result() == [expected_short] * len(batches.result())
    assert compiling.compiled_shapes == {(rows, 512, False, False) for rows in (2, 1, 3)}


def test_compiled_continuous_batching_answers_as_without_it_and_compiles_once(tiny_model: Path, caplog) -> None:
    """hf --compile: transformers compiles its batching steps (CUDA graphs need a GPU); the same
    greedy answers as without it, and a second run compiles nothing more; with a repetition
    penalty (hf-static's work) the static batches are compiled."""
    from torch._dynamo.utils import counters

    plain, compiled = (create_engine(engine=EngineConfig(name="hf", max_in_flight=3, compile=on),
                                     model=ModelConfig(model=str(tiny_model)), device="cpu", label="cpu#0",
                                     batch_size=4) for on in (False, True))
    assert "cpu#0: --compile on cpu: measured 0.26-0.29x the speed without it" in caplog.text
    sampling = SamplingConfig(max_new_tokens=12)
    graphs = counters["stats"]["unique_graphs"]
    expected = [g.text for g in answer_all(plain, requests(7), sampling)]
    assert [g.text for g in answer_all(compiled, requests(7), sampling)] == expected
    compiled_graphs = counters["stats"]["unique_graphs"]
    assert compiled_graphs > graphs  # its steps were compiled
    assert [g.text for g in answer_all(compiled, requests(7), sampling)] == expected
    assert counters["stats"]["unique_graphs"] == compiled_graphs
    penalised = SamplingConfig(max_new_tokens=12, repetition_penalty=1.3)  # hf-static's turn, compiled as well
    assert [g.text for g in answer_all(compiled, requests(7), penalised)] == [
        g.text for g in answer_all(plain, requests(7), penalised)]
    assert compiled.compiled_shapes == {(3, 512, False, False)}  # its batches padded to 3 rows, a static cache
