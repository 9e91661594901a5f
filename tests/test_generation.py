"""Real HF generation with tiny local models: templates, padding, new tokens only, adapters, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.cli import UserError
from tasks.generation import LoadedModel, ModelSpec, Sampling, generate_splitting, resolve_devices

GREEDY = Sampling(max_new_tokens=8)


def test_chat_template_and_left_padding_with_pad_fallback(tiny_model: Path) -> None:
    model = LoadedModel(ModelSpec(str(tiny_model)), "cpu")
    assert model.chat and model.tokenizer.padding_side == "left"
    assert model.tokenizer.pad_token == "</s>"
    assert model.prompt_text("What is 2+2?") == "<s>user: What is 2+2?</s><s>assistant: "
    short, long = model.generate(["Hi", "A much longer question about apples and pears?"], GREEDY)
    assert 1 <= short.tokens <= 8 and 1 <= long.tokens <= 8
    assert "assistant" not in short.text and "apples" not in long.text  # only new tokens are decoded


def test_batched_greedy_matches_one_by_one(tiny_plain_model: Path) -> None:
    model = LoadedModel(ModelSpec(str(tiny_plain_model)), "cpu")
    assert not model.chat and model.prompt_text("Q") == "Q"
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}]
    assert model.prompt_text(turns) == "Q\n\nA\n\nR"
    prompts = ["Tom has 3 apples.", "Janet's ducks lay 16 eggs per day and she eats three."]
    batched = model.generate(prompts, GREEDY)
    alone = [model.generate([prompt], GREEDY)[0] for prompt in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]


def test_sampling_uses_the_seed(tiny_model: Path) -> None:
    model = LoadedModel(ModelSpec(str(tiny_model)), "cpu")
    hot = Sampling(max_new_tokens=12, temperature=1.5, top_p=0.95)
    torch.manual_seed(1)
    first = model.generate(["Count the eggs"] * 2, hot)
    torch.manual_seed(1)
    assert [g.text for g in model.generate(["Count the eggs"] * 2, hot)] == [g.text for g in first]


def test_adapter_changes_outputs_and_merges(tiny_model: Path, tiny_adapter: Path) -> None:
    prompts = ["How many eggs are left?"]
    base = LoadedModel(ModelSpec(str(tiny_model)), "cpu").generate(prompts, Sampling(max_new_tokens=16))
    adapted = LoadedModel(ModelSpec(str(tiny_model), adapter=str(tiny_adapter)), "cpu")
    merged = LoadedModel(ModelSpec(str(tiny_model), adapter=str(tiny_adapter), merge_adapter=True), "cpu")
    assert type(adapted.model).__name__.startswith("PeftModel") and type(merged.model).__name__ == "LlamaForCausalLM"
    with_adapter = adapted.generate(prompts, Sampling(max_new_tokens=16))
    assert with_adapter[0].text != base[0].text
    assert merged.generate(prompts, Sampling(max_new_tokens=16))[0].text == with_adapter[0].text


def test_load_errors_are_user_errors(tmp_path: Path, tiny_model: Path) -> None:
    from bench.tiny_models import build_adapter, build_model

    with pytest.raises(UserError, match="Cannot load model .*local folder holding config.json"):
        LoadedModel(ModelSpec(str(tmp_path / "nowhere")), "cpu")
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        LoadedModel(ModelSpec(str(tiny_model), quantization="4bit"), "cpu")
    wider = build_model(tmp_path / "wider", chat=True, hidden=64)
    misfit = build_adapter(wider, tmp_path / "misfit")
    with pytest.raises(UserError, match="Cannot apply the adapter"):
        LoadedModel(ModelSpec(str(tiny_model), adapter=str(misfit)), "cpu")


def test_failing_batches_are_split_before_giving_up(tiny_model: Path, monkeypatch) -> None:
    model = LoadedModel(ModelSpec(str(tiny_model)), "cpu")
    real, sizes = model.generate, []

    def fails_on_big_batches_and_poison(prompts, sampling):
        sizes.append(len(prompts))
        if len(prompts) > 2 or "poison" in prompts:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(prompts, sampling)

    monkeypatch.setattr(model, "generate", fails_on_big_batches_and_poison)
    results = generate_splitting(model, ["a", "b", "c", "poison", "e", "f", "g", "h"], GREEDY)
    assert sizes[0] == 8 and 4 in sizes and 1 in sizes
    assert [type(r).__name__ for r in results] == ["Generation"] * 3 + ["RuntimeError"] + ["Generation"] * 4


def test_devices() -> None:
    assert resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    if not torch.cuda.is_available():
        assert resolve_devices("auto") == ["cpu"]
    for bad, message in [("cuda:7", "visible GPU"), ("tpu", "Unknown device"), ("cuda", "with its index"), (",", "empty")]:
        with pytest.raises(UserError, match=message):
            resolve_devices(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (4-bit bitsandbytes)")
def test_4bit_on_cuda(tiny_model: Path) -> None:
    model = LoadedModel(ModelSpec(str(tiny_model), quantization="4bit"), "cuda:0")
    assert model.generate(["How many?"], GREEDY)[0].tokens >= 1
