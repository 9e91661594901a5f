"""Datasets: the six benchmarks read from their real files (shipped, or from the shared folder of
original test splits), deterministic subsets, users' JSONL files, hub ids, and every bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tasks.benchmarks import build_items, load_rows, resolve_source, take_subset
from tasks.errors import UserError
from tasks.grading import grade_many
from tasks.store.models import Result
from tests.conftest import ROOT

ORIGINALS = ROOT.parent / "shared" / "data" / "benchmarks"  # the test splits in their original formats


def originals() -> str:
    if not ORIGINALS.is_dir():
        pytest.skip(f"the benchmarks not shipped here are read from {ORIGINALS}, which this checkout lacks")
    return str(ORIGINALS)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(dataset: str, split: str = "test", limit: int | None = None, response_field: str | None = None):
    return load_rows(resolve_source(dataset, split), response_field=response_field, limit=limit)


@pytest.mark.parametrize("name, rows, question_id, opening, reference, metadata", [
    ("gsm8k", 1319, "gsm8k/test/0", "Janet’s ducks lay 16 eggs per day", "18", None),
    ("math", 5000, "math/0", "How many vertical asymptotes does the graph", "2", {"level": 3, "subject": "Algebra"}),
    ("gsm-hard", 1319, "gsm-hard/0", "Janet’s ducks lay 16 eggs per day", "-9867630", None),
    ("svamp", 1000, "svamp/chal-777", "There are 87 oranges and 290 bananas", "145", {"type": "Common-Division"}),
    ("asdiv", 2215, "asdiv/0", "Seven red apples and two green apples", "9", {"type": "Addition"}),
    ("mawps", 2065, "mawps/0", "Joan found 70 seashells on the beach", "43", {"type": "singleeq"}),
])
def test_every_benchmark_reads_its_original_file(name, rows, question_id, opening, reference, metadata) -> None:
    loaded = load_rows(resolve_source(name, "test", originals()))
    first = loaded[0]
    assert len(loaded) == rows and len({row.question_id for row in loaded}) == rows  # stable, unique ids
    assert (first.question_id, first.reference, first.metadata) == (question_id, reference, metadata)
    assert first.question.startswith(opening)


def test_shipped_benchmarks_need_no_folder_and_the_others_say_where_to_find_them() -> None:
    for name in ("gsm8k", "math", "svamp"):
        assert resolve_source(name, "test").path.is_relative_to(ROOT / "data")
    for name, licence in (("asdiv", "CC BY-NC 4.0"), ("gsm-hard", "none stated"), ("mawps", "none stated")):
        not_shipped = f"{name} is not shipped with fleetgen \\(its licence: {licence}.*--data-dir"
        with pytest.raises(UserError, match=not_shipped):
            resolve_source(name, "test")


def test_references_grade_their_own_solutions() -> None:
    """MATH references are the last \\boxed{} of each solution: every solution grades right."""
    rows = load("math")
    solutions = [json.loads(line)["solution"] for line in (ROOT / "data/math/test.jsonl").read_text().splitlines()]
    assert all(g.correct for g in grade_many([(solution, row.reference) for solution, row in zip(solutions, rows)]))
    gsm8k = load(str(ROOT / "data/gsm8k/test.jsonl"), response_field="answer", limit=300)
    assert all(g.correct for g in grade_many([(str(row.response), row.reference) for row in gsm8k]))


def test_asdiv_answers_keep_the_number_or_the_words() -> None:
    rows = {row.reference for row in load_rows(resolve_source("asdiv", "test", originals()))}
    assert {"9", "15", "Mrs. Hilt", "3:30 p.m."} <= rows and not any(reference.endswith(")") for reference in rows)


def test_subsets_are_deterministic_and_stratified() -> None:
    math = load("math")
    math500 = take_subset(math, 500, "math")
    listed = [line.split()[0] for line in (ROOT / "data/math/math500.txt").read_text().splitlines() if line[0] != "#"]
    assert [row.question_id for row in math500] == sorted(listed, key=lambda q: int(q.split("/")[1]))
    assert Counter(row.metadata["level"] for row in math500) == {5: 134, 4: 128, 3: 105, 2: 90, 1: 43}
    hundred = take_subset(math, 100, "math")
    assert hundred == take_subset(math, 100, "math") and len(hundred) == 100
    share = Counter(row.metadata["subject"] for row in hundred)
    for subject, count in Counter(row.metadata["subject"] for row in math).items():
        assert abs(share[subject] - 100 * count / len(math)) <= 2  # every subject in proportion
    assert len(take_subset(load("svamp"), 50, "svamp")) == 50 and take_subset(math[:10], 50) == math[:10]


def test_shipped_gsm8k_splits_load_with_stable_ids() -> None:
    test = load("gsm8k", "test")
    assert len(test) == 1319 and len(load("gsm8k", "train")) == 7473
    assert test[42].question_id == "gsm8k/test/42"
    assert [r.question_id for r in load("gsm8k", limit=3)] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]


def test_jsonl_rows_use_their_id_field_when_present(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"id": "a", "question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "4"}])
    rows = load(str(path))
    assert [(r.question_id, r.reference) for r in rows] == [("a", "2"), ("mine/1", "4")]


def test_responses_become_graded_done_items_and_repeated_ids_successive_samples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "byo.jsonl", [
        {"id": "a", "question": "q", "answer": "2", "output": "it is 2"},
        {"id": "a", "question": "q", "answer": "2", "output": "it is 3"},
        {"id": "b", "question": "q", "answer": "5", "output": "5"}])
    items = build_items(load(str(path), response_field="output"), samples=1)
    assert [(i.question_id, i.sample, i.status, i.result) for i in items] == [
        ("a", 0, "done", Result(response="it is 2", predicted="2", correct=True)),
        ("a", 1, "done", Result(response="it is 3", predicted="3", correct=False)),
        ("b", 0, "done", Result(response="5", predicted="5", correct=True))]


def test_samples_make_k_pending_items_per_question_with_their_metadata() -> None:
    items = build_items(load("gsm8k", limit=2), samples=3)
    assert [(i.question_id, i.sample, i.status) for i in items][:4] == [
        ("gsm8k/test/0", 0, "pending"), ("gsm8k/test/0", 1, "pending"), ("gsm8k/test/0", 2, "pending"),
        ("gsm8k/test/1", 0, "pending")]
    assert build_items(load("math", limit=1), samples=1)[0].metadata == {"level": 3, "subject": "Algebra"}


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "1"}\n{"question": "q", oops}\n', r"Line 2 of .*bad.jsonl is not valid JSON"),
    ('{"question": "q", "answer": "1"}\n[1, 2]\n', r"Line 2 of .*bad.jsonl is a JSON list"),
    ('{"question": "q", "answer": "1"}\n\n{"prompt": "q", "answer": "1"}\n',
     r"Row 3 of .*bad.jsonl has no 'question' field \(it has: answer, prompt\)"),
    ("\n\n", r"holds no rows"),
])
def test_bad_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(UserError, match=message):
        load(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("dataset, split, message", [
    ("missing.jsonl", "test", "cannot be read \\(no such file\\)"),
    ("gsm8k", "validation", "gsm8k has the split\\(s\\) train, test, not 'validation'"),
    ("math", "train", "math has the split\\(s\\) test, not 'train'"),
    ("not a dataset!", "test", "cannot be read"),
])
def test_bad_sources_are_user_errors(dataset: str, split: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_source(dataset, split)


def test_hub_ids_go_to_the_hub_and_fail_clearly_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    source = resolve_source("someone/no-such-dataset:main", "test")
    assert source.hub_id == "someone/no-such-dataset:main" and source.name == "someone/no-such-dataset/main/test"
    with pytest.raises(UserError, match="Could not load 'someone/no-such-dataset:main'.*Save it as JSONL"):
        load_rows(source)
