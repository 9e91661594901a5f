"""Datasets in, work items out. One adapter module per benchmark turns its files into rows of one
shape (`Row`); a user's JSONL file or a hub id goes through the same validation."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tasks.benchmarks import gsm8k
from tasks.benchmarks.files import Source, read_rows
from tasks.errors import UserError
from tasks.grading import grade_response
from tasks.grading.extract import reference_answer
from tasks.store.models import Item, Result

ADAPTERS = {gsm8k.NAME: gsm8k}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


@dataclass(frozen=True)
class Row:
    """One question of a dataset, as every benchmark adapter gives it."""

    question_id: str
    question: str
    reference: str
    response: str | None = None  # a response generated elsewhere (bring your own)


def resolve_source(dataset: str, split: str) -> Source:
    """A benchmark's name, a JSONL path, or a hub id; UserError for anything else."""
    if dataset in ADAPTERS:
        return ADAPTERS[dataset].source(split)
    path = Path(dataset).expanduser()
    if path.is_file():
        return Source(path.stem, path=path, split=split)
    if dataset.endswith((".jsonl", ".json")) or path.is_dir() or not HUB_ID.match(dataset):
        kind = "a folder" if path.is_dir() else "no such file"
        raise UserError(
            f"Dataset {dataset!r} cannot be read ({kind}). Pass --dataset {'|'.join(ADAPTERS)} (shipped), "
            "the path of a JSONL file with one JSON object per line, or a hub id such as openai/gsm8k:main.")
    return Source(f"{dataset.replace(':', '/')}/{split}", hub_id=dataset, split=split)


def load_rows(source: Source, *, question_field: str = "question", answer_field: str = "answer",
              response_field: str | None = None, limit: int | None = None) -> list[Row]:
    """The source's rows in file order, validated; ids from a row's `id` field, else
    `<source name>/<row index>`."""
    raw = read_rows(source)
    if not raw:
        raise UserError(f"Dataset {source.where} holds no rows.")
    wanted = [question_field, answer_field] + ([response_field] if response_field else [])
    rows = []
    for index, (line, row) in enumerate(raw[:limit]):
        for name in wanted:
            if row.get(name) is None:
                raise UserError(
                    f"Row {line} of {source.where} has no {name!r} field (it has: {', '.join(sorted(row)) or 'none'}). "
                    "Name the right fields with --question-field, --answer-field or --response-field.")
        rows.append(Row(
            question_id=str(row["id"]) if row.get("id") is not None else f"{source.name}/{index}",
            question=str(row[question_field]), reference=reference_answer(str(row[answer_field])),
            response=str(row[response_field]) if response_field else None))
    return rows


def build_items(rows: list[Row], samples: int) -> list[Item]:
    """`samples` pending stage-0 items per row. Rows that carry a response become one done item
    each holding it, graded; rows sharing a question id become its successive samples."""
    items: list[Item] = []
    seen: Counter[str] = Counter()
    for row in rows:
        question = {"question_id": row.question_id, "question": row.question, "reference": row.reference}
        if row.response is not None:
            predicted, correct = grade_response(row.response, row.reference)
            result = Result(response=row.response, predicted=predicted, correct=correct)
            items.append(Item(**question, sample=seen[row.question_id], status="done", result=result))
            seen[row.question_id] += 1
        else:
            items.extend(Item(**question, sample=sample) for sample in range(samples))
    return items
