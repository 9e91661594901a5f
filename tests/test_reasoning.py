"""Reasoning traces: the trace told apart from the answer and never graded, thinking on and off
through the chat template (HF) and `chat_template_kwargs` (servers), budget forcing through the
command line (HF) and a server, evaluate's figures, and both store backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.generate import generate
from flows.seed import seed
from tasks.config import ModelConfig, SamplingConfig, SeedConfig, WorkerConfig
from tasks.engines import Generation
from tasks.engines.hf_static import HFStaticEngine
from tasks.errors import UserError
from tasks.evaluation.metrics import evaluate_items
from tasks.reasoning import FORCED_LEAD_IN, Split, split_reasoning
from tasks.store.models import Item, Result
from tasks.store.sqlite import SqliteStore
from tasks.worker.results import Outcome, store_outcomes
from tests.conftest import run_flow_cli
from tests.support import ScriptedServer


@pytest.mark.unit
@pytest.mark.parametrize("text, thinking, marker, expected", [
    ("<think>6*3 = 18</think>\n\n#### 18", "auto", "</think>", Split("6*3 = 18", "#### 18", True)),
    ("6*3 = 18\n</think>\n#### 18", "auto", "</think>", Split("6*3 = 18", "#### 18", True)),  # opened in the prompt
    ("<think>6*3 = 18, or 20", "auto", "</think>", Split("6*3 = 18, or 20", "", False)),  # cut off
    ("6*3 = 18, or 20", "on", "</think>", Split("6*3 = 18, or 20", "", False)),  # asked to think, never ended
    ("So it is 18.\n#### 18", "auto", "</think>", Split(None, "So it is 18.\n#### 18", None)),  # no trace
    ("So it is 18.\n#### 18", "off", "</think>", Split(None, "So it is 18.\n#### 18", None)),
    ("3*6<|end_of_thought|>#### 18", "auto", "<|end_of_thought|>", Split("3*6", "#### 18", True)),
])
def test_a_trace_is_told_apart_from_its_answer(text: str, thinking: str, marker: str, expected: Split) -> None:
    assert split_reasoning(text, marker=marker, thinking=thinking) == expected


@pytest.mark.unit
def test_only_the_answer_is_graded_and_a_cut_off_trace_has_none(store) -> None:
    store.seed("r", [Item(question_id=q, question="Eggs?", reference="18") for q in ("ended", "cut", "plain")])
    claim = store.claim("r", "w", 3, 60)
    answers = {"ended": Generation("<think>3*6 = 18, not 20</think>\n\nSo 18 eggs.\n#### 18", 20, "stop"),
               "cut": Generation("<think>3*6 = 18, so maybe 18", 10, "length"),  # 18 is in it, but no answer
               "plain": Generation("#### 20", 3, "stop")}
    outcomes = [Outcome(item=item, claim=claim, answer=answers[item.question_id]) for item in claim.items]
    store_outcomes(store, outcomes, engine="scripted", device="cpu", config=WorkerConfig(worker="w"))
    results = {item.question_id: item.result for item in store.items("r")}
    ended, cut, plain = results["ended"], results["cut"], results["plain"]
    assert (ended.reasoning, ended.response, ended.reasoning_complete, ended.predicted, ended.correct) == (
        "3*6 = 18, not 20", "So 18 eggs.\n#### 18", True, "18", True)
    assert 0 < ended.reasoning_tokens < 20 and ended.tokens == 20
    assert (cut.reasoning, cut.response, cut.reasoning_complete, cut.predicted, cut.correct) == (
        "3*6 = 18, so maybe 18", "", False, None, False)
    assert (plain.reasoning, plain.reasoning_complete, plain.predicted) == (None, None, "20")
    lean = {item.question_id: item.result for item in store.items("r", texts=False)}  # reports leave texts out
    assert lean["ended"].reasoning is None and lean["ended"].reasoning_complete is True


def test_brought_responses_with_traces_are_graded_after_them(prefect_env, tmp_path: Path) -> None:
    rows = [{"question": "Eggs?", "answer": "18", "response": "<think>maybe 20? no: 18</think>\n#### 18"},
            {"question": "Figs?", "answer": "20", "response": "<think>it is 20, I think, unless"}]
    dataset = tmp_path / "brought.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'w.db'}", run="r", dataset=str(dataset), response_field="response"))
    results = {item.question: item.result for item in SqliteStore(tmp_path / "w.db").items("r")}
    assert (results["Eggs?"].predicted, results["Eggs?"].correct, results["Eggs?"].reasoning) == (
        "18", True, "maybe 20? no: 18")
    assert (results["Figs?"].predicted, results["Figs?"].correct, results["Figs?"].reasoning_complete) == (
        None, False, False)


def test_the_chat_template_is_told_whether_to_think(tiny_model: Path) -> None:
    model = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")
    on, off, auto = (model.prompt_text("Eggs?", thinking) for thinking in ("on", "off", "auto"))
    empty_trace = "<think>\n\n</think>\n\n"  # what Qwen3's template writes for enable_thinking=False
    assert off.endswith("assistant: " + empty_trace) and on == auto == off.removesuffix(empty_trace)
    assert len(model.encode("Eggs?", "off")) > len(model.encode("Eggs?", "on"))


def test_hf_engines_count_the_traces_tokens(tiny_model: Path) -> None:
    model = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")
    tokens = model.tokenizer("<think>3*6 = 18, not 20</think>\n\nSo 18 eggs.\n#### 18")["input_ids"]
    answer = model.answer(tokens, "</think>")
    up_to = [count for count in range(1, len(tokens) + 1) if "</think>" in model.tokenizer.decode(tokens[:count])]
    assert answer.reasoning_tokens == up_to[0] < answer.tokens == len(tokens)
    assert model.answer(tokens, "<|end_of_thought|>").reasoning_tokens is None  # no such marker in it


def test_budget_forcing_through_the_command_line(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    """A random model never ends its trace: each is closed at 6 tokens and answered in at most 4 more."""
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    seed(SeedConfig(store=url, run="r", limit=6))
    result = run_flow_cli("generate.py", "--run", "r", "--model", str(tiny_model), "--devices", "cpu", "--thinking",
                          "on", "--thinking-budget", "6", "--answer-budget", "4", cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkpoints: none with --engine hf-static (it cannot stream)" in result.stdout + result.stderr
    results = [item.result for item in SqliteStore(tmp_path / "fleetgen.db").items("r")]
    assert len(results) == 6
    for answer in results:
        assert (answer.thinking_forced, answer.reasoning_complete, answer.reasoning_tokens) == (True, False, 6)
        assert 6 < answer.tokens <= 10 and answer.response.startswith(FORCED_LEAD_IN) and answer.reasoning
        assert answer.sampling["thinking"] == "on" and answer.sampling["thinking_budget"] == 6  # provenance
    report = run_flow_cli("evaluate.py", "--run", "r", "--json", str(tmp_path / "m.json"), cwd=tmp_path,
                          env=prefect_env)
    assert report.returncode == 0, report.stdout + report.stderr
    reasoning = json.loads((tmp_path / "m.json").read_text())["runs"][0]["reasoning"]
    assert (reasoning["answers"], reasoning["forced"], reasoning["complete"]) == (6, 1.0, 0.0)
    assert reasoning["reasoning_tokens"] == {"median": 6, "p90": 6}
    assert "100.0% closed at the thinking budget" in report.stdout


def test_a_server_gets_thinking_and_budget_forcing(prefect_env, tmp_path: Path) -> None:
    """Eggs? thinks briefly and answers; Figs? thinks past the budget and is forced; Plums? is cut
    off in its answer and goes on from there, unforced."""

    def reply(body: dict) -> tuple[str, str]:
        messages = body["messages"]
        question, so_far = messages[0]["content"], messages[-1]["content"] if len(messages) > 1 else ""
        if "Eggs" in question:
            return "<think>3*6 = 18</think>\n\n#### 18", "stop"
        if "Figs" in question:
            return ("20}", "stop") if so_far else ("<think>" + "hmm " * 40, "length")
        return ("0", "stop") if so_far else ("<think>2*10</think>\n\n#### 2", "length")

    dataset = tmp_path / "three.jsonl"
    dataset.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                               for q, a in (("Eggs?", "18"), ("Figs?", "20"), ("Plums?", "20"))))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", dataset=str(dataset)))
    server = ScriptedServer([], reply=reply)
    try:
        generate(WorkerConfig(store=url, run="r", model={"model": "scripted-model"}, batch_size=3,
                              engine={"name": "openai", "api_base": server.url, "concurrency": 3},
                              sampling={"thinking": "on", "thinking_budget": 40, "answer_budget": 8}))
    finally:
        server.close()
    results = {item.question: item.result for item in SqliteStore(tmp_path / "w.db").items("r")}
    eggs, figs, plums = results["Eggs?"], results["Figs?"], results["Plums?"]
    assert (eggs.reasoning, eggs.response, eggs.correct, eggs.thinking_forced) == ("3*6 = 18", "#### 18", True, False)
    assert (figs.response, figs.correct, figs.thinking_forced, figs.reasoning_complete) == (
        FORCED_LEAD_IN + "20}", True, True, False)
    assert figs.reasoning == " ".join(["hmm"] * 40) and figs.reasoning_tokens == 40  # the first part's tokens
    assert (plums.response, plums.correct, plums.thinking_forced, plums.reasoning_complete) == ("#### 20", True,
                                                                                                False, True)
    # streamed (checkpoints are on), so the trace's tokens are counted: the pieces up to the marker's
    assert eggs.reasoning_tokens == len(["<think>3*6", " =", " 18</think>"]) and plums.reasoning_tokens == 1
    assert all(request["body"]["stream"] for request in server.requests if request["body"]["max_tokens"] > 1)
    asked = [request["body"] for request in server.requests if request["body"]["max_tokens"] > 1]  # not the check
    assert all(body["chat_template_kwargs"] == {"enable_thinking": True} for body in asked)
    first = [body for body in asked if len(body["messages"]) == 1]
    goes_on = [body for body in asked if len(body["messages"]) == 2]
    assert len(first) == 3 and {body["max_tokens"] for body in first} == {40}
    assert len(goes_on) == 2 and {body["max_tokens"] for body in goes_on} == {8}
    assert all(body["continue_final_message"] and body["messages"][-1]["role"] == "assistant" for body in goes_on)


@pytest.mark.unit
def test_evaluate_reads_traces_on_a_run_of_known_counts() -> None:
    def answered(n: int, *, complete: bool | None, correct: bool, forced: bool | None = None, trace: int = 100,
                 answer: int = 50) -> Item:
        result = Result(response="#### 1" if correct or complete else "", predicted="1" if correct else None,
                        correct=correct, tokens=trace + answer, reasoning_complete=complete, thinking_forced=forced,
                        reasoning_tokens=trace if complete is not None else None)
        return Item(question_id=f"q{n}", question="?", reference="1", status="done", result=result)

    items = ([answered(n, complete=True, correct=n < 3, trace=100 * (n + 1)) for n in range(4)]  # 3 of 4 right
             + [answered(4, complete=False, correct=False, trace=1000, answer=0)]  # cut off: no answer
             + [answered(5, complete=False, correct=True, forced=True, trace=500, answer=20)]
             + [answered(6, complete=None, correct=False)])  # no trace at all
    reasoning = evaluate_items("r", items)["reasoning"]
    assert reasoning["answers"] == 6 and reasoning["complete"] == 4 / 6
    assert reasoning["accuracy_complete"] == 3 / 4 and reasoning["no_answer_cut_off"] == 1 / 7
    assert (reasoning["forced"], reasoning["accuracy_forced"], reasoning["accuracy_not_forced"]) == (1 / 6, 1.0, 3 / 5)
    assert reasoning["reasoning_tokens"] == {"median": 350, "p90": 1000}  # 100, 200, 300, 400, 500, 1000
    assert reasoning["answer_tokens"] == {"median": 50, "p90": 50}  # 0, 20, 50, 50, 50, 50


def test_budget_forcing_composes_with_code_execution(prefect_env, tmp_path: Path) -> None:
    """The trace runs code, goes on from its output until the budget (what is left of it after the
    first round), and is closed there; the code executions of both parts are counted."""

    def reply(body: dict) -> tuple[str, str]:
        so_far = body["messages"][-1]["content"] if len(body["messages"]) > 1 else ""
        if FORCED_LEAD_IN in so_far:
            return "18}", "stop"
        if "```output" in so_far:
            return "so it is 18, " * 10, "length"
        return "<think>Let me compute.\n```python\nprint(6 * 3)\n```\n", "stop"

    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"question": "Eggs?", "answer": "18"}) + "\n")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", dataset=str(dataset)))
    server = ScriptedServer([], reply=reply)
    try:
        generate(WorkerConfig(store=url, run="r", model={"model": "scripted-model"}, code_execution=True,
                              engine={"name": "openai", "api_base": server.url},
                              sampling={"thinking": "on", "thinking_budget": 50, "answer_budget": 8}))
    finally:
        server.close()
    [item] = SqliteStore(tmp_path / "w.db").items("r")
    answer = item.result
    assert (answer.code_executions, answer.code_errors, answer.thinking_forced, answer.correct) == (1, 0, True, True)
    assert "```output\n18\n```" in answer.reasoning and answer.response == FORCED_LEAD_IN + "18}"
    first_round = len("<think>Let me compute.\n```python\nprint(6 * 3)\n```\n".split())
    assert answer.reasoning_tokens == first_round + 40  # both rounds of the trace, as the server counted them
    budgets = [request["body"]["max_tokens"] for request in server.requests][1:]  # after the one-token check
    assert budgets == [50, 50 - first_round, 8]


@pytest.mark.unit
def test_answers_made_before_the_thinking_settings_existed_count_as_made_the_same_way() -> None:
    """A run answered partly before an upgrade: the older answers' sampling lacks the thinking keys
    (they were made with the template's default); evaluate still reads the run as made one way."""
    now = SamplingConfig().model_dump()
    before = {key: value for key, value in now.items() if not key.startswith(("thinking", "answer_budget"))}
    items = [Item(question_id=f"q{n}", question="?", reference="1", status="done",
                  result=Result(response="#### 1", predicted="1", correct=True, engine="hf-static", model={},
                                prompt="step_by_step", prompt_hash="h", sampling=sampling))
             for n, sampling in enumerate((before, now))]
    assert evaluate_items("r", items)["accuracy"] == 1.0
    items[1].result.sampling = {**now, "thinking": "on"}  # really another way: refused
    with pytest.raises(UserError, match="2 different ways"):
        evaluate_items("r", items)
