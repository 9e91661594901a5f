"""Datasets in, work items out. One adapter module per benchmark (`gsm8k.py`, `hendrycks_math.py`,
`gsm_hard.py`, `svamp.py`, `asdiv.py`, `mawps.py`) turns its original file into rows of one shape
(`Row`); a user's JSONL file or a hub id goes through the same validation, read by field names.
Benchmarks whose licence allows it are shipped in `data/`; the others are read from `--data-dir`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

from tasks.benchmarks import asdiv, gsm8k, gsm_hard, hendrycks_math, mawps, svamp
from tasks.benchmarks.files import Source, read_rows
from tasks.benchmarks.row import Row
from tasks.errors import UserError
from tasks.grading import grade_many
from tasks.grading.extract import reference_answer
from tasks.reasoning import split_reasoning
from tasks.store.models import Item, Result

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
ADAPTERS: dict[str, ModuleType] = {m.NAME: m for m in (gsm8k, hendrycks_math, gsm_hard, svamp, asdiv, mawps)}
SUITES = {"math-word-problems": ["gsm8k", "math", "gsm-hard", "svamp", "asdiv", "mawps"]}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")

__all__ = ["ADAPTERS", "SUITES", "Row", "Source", "build_items", "load_rows", "resolve_source", "take_subset"]


def _benchmark_source(adapter: ModuleType, split: str, data_dir: str | None) -> Source:
    if split not in adapter.FILES:
        raise UserError(f"{adapter.NAME} has the split(s) {', '.join(adapter.FILES)}, not {split!r}. "
                        f"Pass --split {next(iter(adapter.FILES))}.")
    folders = ([DATA_DIR] if adapter.SHIPPED else []) + ([Path(data_dir).expanduser()] if data_dir else [])
    for folder in folders:
        if (folder / adapter.FILES[split]).is_file():
            return Source(f"{adapter.NAME}/{split}", path=folder / adapter.FILES[split], split=split,
                          benchmark=adapter.NAME)
    raise UserError(
        f"{adapter.NAME} is not shipped with fleetgen (its licence: {adapter.LICENCE}) and no --data-dir holds "
        f"{adapter.FILES[split]}" + (f" (looked in {data_dir})" if data_dir else "") + ". Pass --data-dir with the "
        "folder of the original test splits, e.g. microsoft/ToRA's src/data.")


def resolve_source(dataset: str, split: str, data_dir: str | None = None) -> Source:
    """A benchmark's name, a JSONL path, or a hub id; UserError for anything else."""
    if dataset in ADAPTERS:
        return _benchmark_source(ADAPTERS[dataset], split, data_dir)
    path = Path(dataset).expanduser()
    if path.is_file():
        return Source(path.stem, path=path, split=split)
    if dataset.endswith((".jsonl", ".json")) or path.is_dir() or not HUB_ID.match(dataset):
        kind = "a folder" if path.is_dir() else "no such file"
        raise UserError(
            f"Dataset {dataset!r} cannot be read ({kind}). Pass --dataset {'|'.join(ADAPTERS)}, the path of a "
            "JSONL file with one JSON object per line, or a hub id such as openai/gsm8k:main.")
    return Source(f"{dataset.replace(':', '/')}/{split}", hub_id=dataset, split=split)


def load_rows(source: Source, *, question_field: str = "question", answer_field: str = "answer",
              response_field: str | None = None, limit: int | None = None) -> list[Row]:
    """The source's rows in file order, validated. A benchmark's adapter reads its own fields;
    a user's file is read by field names, ids from a row's `id` field, else `<name>/<row index>`."""
    raw = read_rows(source)
    if not raw:
        raise UserError(f"Dataset {source.where} holds no rows.")
    if source.benchmark:
        if response_field:
            raise UserError("--response-field reads your own file: pass its path to --dataset, not a benchmark name.")
        adapter = ADAPTERS[source.benchmark]
        return [adapter.to_row(index, row, source.split) for index, (_, row) in enumerate(raw[:limit])]
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
            response=str(row[response_field]) if response_field else None, solution=str(row[answer_field])))
    return rows


def take_subset(rows: list[Row], size: int, benchmark: str | None = None) -> list[Row]:
    """A deterministic subset of `size` rows for quick evaluations: a benchmark's named subset
    (MATH's 500), else every stratum (MATH: level and subject; others: type) in proportion, the
    rows of a stratum taken in the order of a hash of their ids. The same rows every time."""
    named = getattr(ADAPTERS.get(benchmark or ""), "NAMED_SUBSETS", {}).get(size)
    if named:
        ids = {line.split()[0] for line in (DATA_DIR / named).read_text().splitlines() if line and line[0] != "#"}
        return [row for row in rows if row.question_id in ids]
    if size >= len(rows):
        return rows
    strata: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        strata[tuple(sorted((row.metadata or {}).items()))].append(row)
    quotas = {key: size * len(members) // len(rows) for key, members in strata.items()}
    by_remainder = sorted(strata, key=lambda key: -(size * len(strata[key]) % len(rows)))
    for key in by_remainder[:size - sum(quotas.values())]:  # largest remainders get the rows left over
        quotas[key] += 1
    def shuffled(rows: list[Row]) -> list[Row]:  # the same order on every machine
        return sorted(rows, key=lambda row: hashlib.sha256(row.question_id.encode()).hexdigest())

    chosen = {row.question_id for key, members in strata.items() for row in shuffled(members)[:quotas[key]]}
    return [row for row in rows if row.question_id in chosen]


def build_items(rows: list[Row], samples: int, *, solutions: bool = False,
                until_correct: int | None = None) -> list[Item]:
    """`samples` pending stage-0 items per row. Rows that carry a response become one done item
    each holding it, graded; rows sharing a question id become its successive samples. With
    `solutions`, each item keeps its row's reference solution (metadata `solution`); with
    `until_correct`, samples after the first wait for the one before them, and each item carries N
    (metadata `until_correct`), so the store settles the next samples with no lookup."""
    answered = [row for row in rows if row.response is not None]
    splits = {id(row): split_reasoning(str(row.response)) for row in answered}
    grades = dict(zip(map(id, answered), grade_many([(splits[id(row)].answer, row.reference) for row in answered])))
    items: list[Item] = []
    seen: Counter[str] = Counter()
    for row in rows:
        metadata = {**(row.metadata or {}), **({"solution": row.solution} if solutions and row.solution else {}),
                    **({"until_correct": until_correct} if until_correct else {})} or None
        question: dict[str, Any] = {"question_id": row.question_id, "question": row.question,
                                    "reference": row.reference, "metadata": metadata}
        if row.response is not None:
            graded = grades[id(row)]
            split = splits[id(row)]  # a <think> trace apart from the answer, which alone is graded
            result = Result(response=split.answer, reasoning=split.reasoning, reasoning_complete=split.complete,
                            predicted=graded.predicted, correct=graded.correct)
            items.append(Item(**question, sample=seen[row.question_id], status="done", result=result))
            seen[row.question_id] += 1
        else:
            items.extend(Item(**question, sample=sample, status="waiting" if until_correct and sample else "pending")
                         for sample in range(samples))
    return items
