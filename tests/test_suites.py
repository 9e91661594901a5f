"""Benchmarks as a suite: seeded as runs of their own, drained by one worker in order, evaluated
in one table (MATH by level and subject); pass@k and maj@k over each question's own samples;
answers made different ways never merged; greedy samples said to be identical; SFT export of
refine rounds as the conversations they answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.evaluate import evaluate
from flows.export import export
from flows.generate import generate
from flows.seed import seed
from tasks.config import EvaluateConfig, ExportConfig, SamplingConfig, SeedConfig, WorkerConfig
from tasks.errors import UserError
from tasks.evaluation.metrics import evaluate_items
from tasks.evaluation.report import summary_rows
from tasks.export import sft_rows
from tasks.prompts import render
from tasks.store.models import Item, Result
from tasks.store.sqlite import SqliteStore
from tasks.worker.loop import sampling_warnings
from tests.conftest import run_flow_cli
from tests.support import ScriptedEngine
from tests.test_benchmarks import originals

SUITE = ["gsm8k", "math", "gsm-hard", "svamp", "asdiv", "mawps"]


class ReferenceEngine(ScriptedEngine):
    """Answers every question with its reference (looked up by question text) in MATH's style,
    except the questions in `wrong`: the real worker around it grades."""

    name = "reference"

    def __init__(self, references: dict[str, str], wrong: tuple[str, ...] = ()):
        super().__init__(references)
        self.wrong = wrong

    def reply(self, text: str) -> str:
        reference = next(ref for question, ref in self.responses.items() if question in text)
        return f"So the answer is $\\boxed{{{'0' if any(q in text for q in self.wrong) else reference}}}$."


def test_a_suite_is_seeded_drained_in_order_and_evaluated_in_one_table(prefect_env, tmp_path: Path, monkeypatch):
    from tasks.worker import steps

    url = f"sqlite:///{tmp_path / 'w.db'}"
    seeded = seed(SeedConfig(store=url, suite="math-word-problems", run_prefix="mwp", subset=6, data_dir=originals()))
    assert list(seeded["runs"]) == [f"mwp-{name}" for name in SUITE]
    assert all(counts["items"] == 6 for counts in seeded["runs"].values())
    store = SqliteStore(tmp_path / "w.db")
    references = {item.question: item.reference for run in seeded["runs"] for item in store.items(run)}
    wrong = tuple(item.question for item in store.items("mwp-gsm8k")[:2])
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: ReferenceEngine(references, wrong=wrong))
    result = generate(WorkerConfig(store=url, run="mwp-*", devices="cpu", batch_size=4))
    assert result["runs"] == [f"mwp-{name}" for name in SUITE] and result["devices"]["all"]["done"] == 36
    assert {item.status for run in seeded["runs"] for item in store.items(run)} == {"done"}

    report = evaluate(EvaluateConfig(store=url, runs="mwp-*", json_path=str(tmp_path / "suite.json")))
    table = {row["run"]: row for row in report["table"]}
    assert list(table) == [f"mwp-{name}" for name in SUITE] and all(r["questions"] == 6 for r in table.values())
    assert table["mwp-math"]["accuracy"] == 1.0 and table["mwp-svamp"]["accuracy"] == 1.0
    assert table["mwp-gsm8k"]["accuracy"] == round(4 / 6, 4)  # the engine answers two of them wrong
    math = next(metrics for metrics in report["runs"] if metrics["run"] == "mwp-math")
    assert set(math["by"]) == {"level", "subject"} and sum(r["questions"] for r in math["by"]["level"].values()) == 6
    written = json.loads((tmp_path / "suite.json").read_text())
    assert len(written["runs"]) == 6 and (tmp_path / "suite.png").read_bytes()[:4] == b"\x89PNG"

    printed = run_flow_cli("evaluate.py", "--store", url, "--runs", "mwp-*", cwd=tmp_path, env=prefect_env)
    assert printed.returncode == 0, printed.stderr
    assert "mwp-asdiv" in printed.stdout and "mwp-math by subject:" in printed.stdout


def test_a_bring_your_own_suite_with_known_accuracy_per_benchmark(prefect_env, tmp_path: Path) -> None:
    """Responses made elsewhere for four benchmarks' real questions, in the forms models write
    them; their known accuracy comes back per benchmark in one table."""
    from tasks.benchmarks import load_rows, resolve_source

    right = {"math": "So the answer is $\\boxed{{{}}}$.", "svamp": "They have {} in all.\n#### {}",
             "asdiv": "Final Answer: The final answer is {}. I hope it is correct.", "gsm8k": "The answer is: {}"}
    known = {"math": 3 / 4, "svamp": 2 / 4, "asdiv": 1 / 4, "gsm8k": 4 / 4}
    url = f"sqlite:///{tmp_path / 'w.db'}"
    for name, form in right.items():
        rows = load_rows(resolve_source(name, "test", originals()), limit=4)
        wrong = round(4 * (1 - known[name]))
        lines = [{"id": row.question_id, "question": row.question, "answer": row.reference,
                  "response": form.format(*[row.reference if n >= wrong else "999"] * 2)} for n, row in enumerate(rows)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        seed(SeedConfig(store=url, run=f"byo-{name}", dataset=str(path), response_field="response"))
    table = {row["run"]: row["accuracy"] for row in evaluate(EvaluateConfig(store=url, runs="byo-*"))["table"]}
    assert table == {f"byo-{name}": accuracy for name, accuracy in known.items()}


def test_a_suite_needs_its_folder_before_anything_is_written(tmp_path: Path) -> None:
    result = run_flow_cli("seed.py", "--suite", "math-word-problems", cwd=tmp_path)
    assert result.returncode == 2 and "gsm-hard is not shipped with fleetgen" in result.stderr
    assert not (tmp_path / "fleetgen.db").exists() or SqliteStore(tmp_path / "fleetgen.db").runs() == []


def answered(question: str, sample: int, predicted: str | None, correct: bool, status: str = "done", **made) -> Item:
    result = Result(response=str(predicted), predicted=predicted, correct=correct, **made) if status == "done" else None
    return Item(question_id=question, question=question, reference="5", sample=sample, status=status, result=result)


def test_pass_and_maj_count_each_questions_own_samples() -> None:
    items = [answered("q1", s, p, p in ("5", "5.0")) for s, p in enumerate(["5", "5.0", "3", "4"])]
    items += [answered("q2", 0, "5", True), answered("q2", 1, "2", False), answered("q2", 2, None, False, "pending")]
    metrics = evaluate_items("r", items)
    assert (metrics["samples"], metrics["samples_min"]) == (4, 2)
    assert metrics["pass@1"] == pytest.approx((2 / 4 + 1 / 2) / 2)  # each question over its own n, no padding
    assert metrics["pass@4"] == 1.0 and metrics["questions@4"] == 1 and metrics["questions@2"] == 2
    assert metrics["maj@4"] == 1.0  # `5` and `5.0` are one vote
    assert metrics["maj@2"] == pytest.approx((1.0 + 0.5) / 2)


def test_answers_made_different_ways_are_never_merged(tmp_path: Path) -> None:
    made = {"engine": "hf-static", "prompt": "step_by_step", "sampling": {"temperature": 0.0}}
    items = [answered("q1", 0, "5", True, model={"model": "A"}, **made),
             answered("q2", 0, "5", True, model={"model": "B"}, **made)]
    with pytest.raises(UserError, match="stage-0 answers made in 2 different ways.*Seed one run per way"):
        evaluate_items("r", items)
    same = evaluate_items("r", [answered("q1", 0, "5", True, model={"model": "A"}, **made)])
    assert same["made_with"]["model"] == {"model": "A"}


def test_an_edited_template_of_the_same_name_is_told_apart_by_evaluate_and_export(prefect_env, tmp_path: Path) -> None:
    made = {"engine": "hf-static", "prompt": "step_by_step", "model": {"model": "A"}, "sampling": {}}
    items = [answered("q1", 0, "5", True, prompt_hash="1111aaaa2222bbbb", **made),
             answered("q2", 0, "5", True, prompt_hash="3333cccc4444dddd", **made)]  # the template edited in between
    with pytest.raises(UserError, match="stage-0 answers made in 2 different ways"):
        evaluate_items("r", items)
    store = SqliteStore(tmp_path / "w.db")
    store.ensure_run("r", {})
    store.seed("r", items)
    with pytest.raises(UserError, match="made in 2 different ways"):
        export(ExportConfig(store=f"sqlite:///{tmp_path / 'w.db'}", run="r", out=str(tmp_path / "x.jsonl"),
                            format="sft"))


def test_the_evaluate_table_says_what_was_measured() -> None:
    made = {"engine": "hf-static", "prompt": "step_by_step", "model": {"model": "Qwen/Qwen2.5-0.5B-Instruct",
            "quantization": "4bit", "adapter": None}, "sampling": {"temperature": 0.7, "top_p": 0.95, "seed": 0}}
    metrics = evaluate_items("r", [answered("q1", 0, "5", True, **made), answered("q2", 0, "4", False, **made)])
    rows = {row["figure"]: row["value"] for row in summary_rows(metrics)}
    assert rows["accuracy at the first attempt"] == "50.0% (1/2)"
    assert rows["made with"] == ("model Qwen/Qwen2.5-0.5B-Instruct (quantization 4bit) with hf-static, prompt "
                                 "step_by_step, sampling: seed 0, temperature 0.7, top_p 0.95")


def test_greedy_samples_are_said_to_be_identical(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "w.db")
    store.ensure_run("k4", {"samples": 4})
    store.ensure_run("k1", {"samples": 1})
    (warning,) = sampling_warnings(store, ["k4", "k1"], SamplingConfig(temperature=0))
    assert "run 'k4' asks 4 samples per question, but --temperature is 0: they will be identical" in warning
    assert sampling_warnings(store, ["k4"], SamplingConfig(temperature=0.7)) == []


def test_sft_export_writes_refine_rounds_as_the_conversation_they_answered(prefect_env, tmp_path: Path) -> None:
    first = answered("q1", 0, "4", False)
    retry = Item(question_id="q1", question="q1", reference="5", stage=1, status="done", previous="It is 4.",
                 result=Result(response="The answer is 5.", predicted="5", correct=True, tokens=3))
    assert sft_rows([first, retry]).rows == []  # refine rounds only when asked
    (row,) = sft_rows([first, retry], refine_conversations=True).rows
    assert [m["content"] for m in row["messages"]] == ["q1", "It is 4.", render("retry"), "The answer is 5."]
    db = tmp_path / "w.db"
    store = SqliteStore(db)
    store.ensure_run("r", {})
    store.seed("r", [first, retry])
    out = tmp_path / "sft.jsonl"
    export(ExportConfig(store=f"sqlite:///{db}", run="r", out=str(out), format="sft", refine_conversations=True))
    assert json.loads(out.read_text())["messages"][1]["role"] == "assistant"


def test_export_refuses_to_mix_ways_in_chats_but_rows_say_how_each_was_made(prefect_env, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    made = {"engine": "hf-static", "prompt": "step_by_step", "sampling": {}}
    store = SqliteStore(db)
    store.ensure_run("r", {})
    store.seed("r", [answered("q1", 0, "5", True, model={"model": "A"}, **made),
                     answered("q2", 0, "5", True, model={"model": "B"}, **made)])
    with pytest.raises(UserError, match="made in 2 different ways"):
        export(ExportConfig(store=f"sqlite:///{db}", run="r", out=str(tmp_path / "x.jsonl"), format="sft"))
    export(ExportConfig(store=f"sqlite:///{db}", run="r", out=str(tmp_path / "rows.jsonl")))
    models = [json.loads(line)["model"] for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert models == [{"model": "A"}, {"model": "B"}]


def test_seed_and_worker_settings_that_exclude_each_other(tmp_path: Path) -> None:
    for args, message in ((["--limit", "5", "--subset", "5"], "--limit (the first N rows) and --subset"),
                          (["--suite", "math-word-problems", "--run", "x"], "--suite seeds its own benchmarks"),
                          (["--run-prefix", "x"], "--run-prefix names the runs of a --suite")):
        result = run_flow_cli("seed.py", *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
