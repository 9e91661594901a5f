"""Labeling: masked reference solutions (OpenMathInstruct's trick) on the real GSM8K and MATH
text, the masked prompt through the worker, and the LLM judge (scripted, and the tiny model)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

import tasks.judge
from bench.standins import mongomock_store
from flows.evaluate import evaluate
from flows.generate import generate
from flows.judge import judge
from flows.seed import seed
from tasks.benchmarks import build_items, load_rows, resolve_source
from tasks.config import EvaluateConfig, JudgeConfig, SamplingConfig, SeedConfig, WorkerConfig
from tasks.errors import UserError
from tasks.evaluation.metrics import evaluate_items
from tasks.grading.extract import reference_answer
from tasks.judge import judge_items
from tasks.masking import NUMBER, mask_solution, numeric_value
from tasks.store.models import Item, Result
from tasks.store.sqlite import SqliteStore
from tasks.worker import steps
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import draw_seed, work_on_run
from tests.conftest import ROOT, run_flow_cli
from tests.support import ScriptedEngine, SerializedStore


def leaks(masked: str, answer: str) -> bool:
    """Whether the masked text still shows the answer: a number of its value, or its text."""
    value = numeric_value(answer)
    if value is not None:
        return any(numeric_value(token) == value for token in NUMBER.findall(masked))
    squeeze = lambda text: re.sub(r"\s", "", re.sub(r"\\[dt]frac", r"\\frac", text))  # noqa: E731
    return squeeze(answer) in squeeze(masked)


@pytest.mark.parametrize("path, field", [("data/gsm8k/train.jsonl", "answer"), ("data/math/test.jsonl", "solution")])
def test_no_masked_solution_leaks_its_answer(path: str, field: str) -> None:
    solutions = [json.loads(line)[field] for line in (ROOT / path).read_text().splitlines()]
    masked = [(mask_solution(solution, reference_answer(solution)), reference_answer(solution))
              for solution in solutions]
    assert len(masked) in (7_473, 5_000)
    assert [answer for text, answer in masked if leaks(text, answer)] == []
    assert sum("M" in text for text, _ in masked) > 0.9 * len(masked)  # the answer's value shows up along the way


def test_masking_keeps_the_reasoning() -> None:
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert mask_solution(solution, "72") == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = M clips."
    boxed = "So $x = \\dfrac{3}{4}$, and the answer is $\\boxed{\\frac{3}{4}}$."
    assert mask_solution(boxed, "\\frac{3}{4}") == "So $x = M$, and the answer is $M$."
    assert mask_solution("It costs $1,234.50 in all: \\boxed{1234.5}", "1234.5") == "It costs $M in all: M"


class PromptRecorder(ScriptedEngine):
    prompts: list[str] = []

    def text_of(self, prompt) -> str:
        self.prompts.append(prompt[0]["content"])
        return prompt[0]["content"]


def test_the_masked_prompt_shows_the_solution_without_its_answer(prefect_env, tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="masked", limit=5, split="train", solutions=True))
    engine = PromptRecorder({"": "\\boxed{1}"})
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: engine)
    generate(WorkerConfig(store=url, run="masked", prompt="masked", devices="cpu", lease_seconds=30))
    items = SqliteStore(tmp_path / "w.db").items("masked")
    assert {item.status for item in items} == {"done"} and {item.result.prompt for item in items} == {"masked"}
    assert len(engine.prompts) == 5
    for prompt in engine.prompts:
        question, shown = prompt.split("Reference solution (answer hidden):\n")
        reference = next(item.reference for item in items if item.question in question)
        assert "M" in shown and "####" not in shown and "<<" not in shown and not leaks(shown, reference)


def test_the_masked_prompt_needs_a_run_seeded_with_solutions(prefect_env, tmp_path: Path) -> None:
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="bare", limit=2))
    result = run_flow_cli("generate.py", "--run", "bare", "--prompt", "masked", "--model", str(tmp_path / "unused"),
                          cwd=tmp_path, env=prefect_env)
    assert result.returncode == 2 and "seed a run with --solutions" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(UserError, match="were seeded without them"):
        generate(WorkerConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="bare", prompt="masked"))


JUDGED = [("q0", "5", "#### 5"), ("q1", "5", "Two and three together make five apples in all."),
          ("q2", "5", "I am not sure how to work this one out at all."),
          ("q3", "5", "This one is too hard for me to finish today, sorry.")]


def judged_run(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    dataset = tmp_path / "answered.jsonl"
    dataset.write_text("".join(json.dumps({"id": q, "question": f"{q}: two plus three?", "answer": a, "output": r})
                               + "\n" for q, a, r in JUDGED))
    seed(SeedConfig(store=url, run="judged", dataset=str(dataset), response_field="output"))
    return url


def test_the_judge_decides_what_the_rules_cannot_read_and_keeps_both(prefect_env, tmp_path: Path, monkeypatch) -> None:
    url = judged_run(tmp_path)
    replies = ScriptedEngine({"Response: Two and three": "Yes.", "Response: I am not sure": "no", "": "It depends."})
    monkeypatch.setattr(tasks.judge, "create_engine", lambda **kwargs: replies)
    result = judge(JudgeConfig(store=url, run="judged", model={"model": "judge-model"}, devices="cpu"))
    assert result["judged"] == 3 and result["verdicts"] == {"yes": 1, "no": 1, "undecided": 1}
    items = {item.question_id: item for item in SqliteStore(tmp_path / "fleetgen.db").items("judged")}
    assert items["q0"].result.judge is None and items["q0"].result.correct  # the rules read it: not judged
    assert items["q1"].result.judge == {"correct": True, "model": "judge-model", "reply": "Yes."}
    assert not items["q1"].result.correct  # the rules' verdict is never changed
    assert items["q3"].result.judge["correct"] is None
    assert judge(JudgeConfig(store=url, run="judged", model={"model": "judge-model"}, devices="cpu"))["judged"] == 0
    metrics = evaluate(EvaluateConfig(store=url, run="judged"))["runs"][0]
    assert metrics["accuracy"] == 0.25 and metrics["judge"] == {"judged": 3, "judged_correct": 1,
                                                                 "accuracy_with_judge": 0.5, "models": ["judge-model"]}


def test_the_tiny_model_judges_through_the_command_line(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    judged_run(tmp_path)
    result = run_flow_cli("judge.py", "--run", "judged", "--model", str(tiny_model), "--devices", "cpu",
                          cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    assert "run 'judged': 3 answers judged" in result.stdout
    items = SqliteStore(tmp_path / "fleetgen.db").items("judged")
    assert sum(item.result.judge is not None for item in items) == 3
    assert all(item.result.judge["model"] == str(tiny_model) for item in items if item.result.judge)


class RightOnTheThirdSample(ScriptedEngine):
    """Answers every question wrongly, except in its third sample (told by the request's seed, one
    per sample: `responses` holds the third samples' seeds)."""

    def run(self, feeder, sampling):
        from tasks.engines import Generation, share_time

        while (requests := feeder.take(self.batch_size, wait=True)) is not None:
            time.sleep(0.01)
            yield share_time([(r, Generation("#### 42" if r.seed in self.responses else "#### 7", tokens=3,
                                             finish_reason="stop")) for r in requests], 0.01)


@pytest.mark.parametrize("backend", ["sqlite", "mongomock"])
def test_until_correct_generates_exactly_the_samples_needed_with_two_workers(tmp_path: Path, backend: str) -> None:
    dataset = tmp_path / "q.jsonl"
    dataset.write_text("".join(json.dumps({"question": f"q{n}: 6 times 7?", "answer": "42"}) + "\n" for n in range(10)))
    rows = load_rows(resolve_source(str(dataset), "test", None))
    if backend == "sqlite":
        stores = [SqliteStore(tmp_path / "w.db") for _ in range(2)]
    else:
        shared = SerializedStore(mongomock_store())
        stores = [shared, shared]
    stores[0].ensure_run("u", {"samples": 8, "until_correct": 1})
    stores[0].seed("u", build_items(rows, 8, until_correct=1))
    config = WorkerConfig(run="u", batch_size=4, lease_seconds=60)
    third_samples = {draw_seed(0, Item(question_id=row.question_id, question="", reference="", sample=2))
                     for row in rows}

    def work(store, name: str) -> None:
        with LeaseKeeper(store, config.lease_seconds) as keeper:
            work_on_run(store=store, engine=RightOnTheThirdSample(third_samples, batch_size=4), keeper=keeper,
                        config=config.model_copy(update={"worker": name}))

    workers = [threading.Thread(target=work, args=(store, f"w{n}")) for n, store in enumerate(stores)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    items = stores[0].items("u")
    assert len(items) == 80 and all(item.attempts == 0 for item in items)  # nothing lost, nothing answered twice
    for question in {item.question_id for item in items}:
        mine = sorted((item for item in items if item.question_id == question), key=lambda item: item.sample)
        assert [item.status for item in mine] == ["done"] * 3 + ["cancelled"] * 5
        assert [item.result.correct for item in mine[:3]] == [False, False, True]
    assert {item.result.worker for item in items if item.result} == {"w0", "w1"}  # both worked
    report = evaluate_items("u", items)["sampling"]
    assert report == {"hard": [], "correct_counts": {1: 10}, "samples_made": 30, "cancelled": 50,
                      "tokens_per_question": 9.0}


def test_the_judge_reads_real_math_text_verbatim() -> None:
    rows = [json.loads(line) for line in (ROOT / "data/math/test.jsonl").read_text().splitlines()[:3]]
    items = [Item(id=str(n), question_id=f"math/{n}", question=row["problem"],
                  reference=reference_answer(row["solution"]), status="done", result=Result(response=row["solution"]))
             for n, row in enumerate(rows)]
    seen: list[str] = []

    class Judge(ScriptedEngine):
        def text_of(self, prompt) -> str:
            seen.append(prompt)
            return prompt

    verdicts = judge_items(Judge({rows[0]["problem"]: "Yes, they are equal.", "": "NO"}), items, SamplingConfig(), "j")
    assert [verdicts[str(n)]["correct"] for n in range(3)] == [True, False, False]
    for prompt, row in zip(seen, rows):  # LaTeX braces and all, as written
        assert row["problem"] in prompt and row["solution"] in prompt and reference_answer(row["solution"]) in prompt
