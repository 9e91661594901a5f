"""Dataset loading: the shipped GSM8K copy, JSONL files, hub ids, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.benchmarks import build_items, load_rows, resolve_source
from tasks.errors import UserError
from tasks.store.models import Result


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(dataset: str, split: str = "test", limit: int | None = None, response_field: str | None = None):
    return load_rows(resolve_source(dataset, split), response_field=response_field, limit=limit)


def test_shipped_gsm8k_splits_load_with_stable_ids() -> None:
    test = load("gsm8k", "test")
    assert len(test) == 1319 and len(load("gsm8k", "train")) == 7473
    assert test[0].question_id == "gsm8k/test/0" and test[0].reference == "18"
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


def test_samples_make_k_pending_items_per_question() -> None:
    items = build_items(load("gsm8k", limit=2), samples=3)
    assert [(i.question_id, i.sample, i.status) for i in items][:4] == [
        ("gsm8k/test/0", 0, "pending"), ("gsm8k/test/0", 1, "pending"), ("gsm8k/test/0", 2, "pending"),
        ("gsm8k/test/1", 0, "pending")]


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
    ("gsm8k", "validation", "GSM8K has splits train, test"),
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
