"""Datasets in, work items out: the shipped GSM8K copy, a local JSONL file or a hub dataset."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.answers import grade_response
from tasks.cli import UserError
from tasks.store import Item

GSM8K_DIR = Path(__file__).resolve().parents[1] / "data" / "gsm8k"
GSM8K_SPLITS = ("train", "test")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


@dataclass(frozen=True)
class Source:
    """Where rows come from: a local JSONL file or a hub dataset id (`owner/name[:config]`)."""

    name: str  # prefix of generated question ids
    path: Path | None = None
    hub_id: str | None = None
    split: str = "test"

    def fingerprint(self) -> str:
        """Content hash of a file, or the hub id and split (used as the load cache key)."""
        if self.path:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        return f"{self.hub_id}@{self.split}"


def resolve_source(dataset: str, split: str) -> Source:
    """`gsm8k` (shipped copy), a JSONL path, or a hub id; raise UserError for anything else."""
    if dataset == "gsm8k":
        if split not in GSM8K_SPLITS:
            raise UserError(f"GSM8K has splits {', '.join(GSM8K_SPLITS)}, not {split!r}. Pass --split train or --split test.")
        return Source(f"gsm8k/{split}", path=GSM8K_DIR / f"{split}.jsonl", split=split)
    path = Path(dataset).expanduser()
    if path.is_file():
        return Source(path.stem, path=path, split=split)
    if dataset.endswith((".jsonl", ".json")) or path.is_dir() or not HUB_ID.match(dataset):
        kind = "a folder" if path.is_dir() else "no such file"
        raise UserError(
            f"Dataset {dataset!r} cannot be read ({kind}). Pass --dataset gsm8k (the shipped copy), "
            "the path of a JSONL file with one JSON object per line, or a hub id such as openai/gsm8k:main."
        )
    return Source(f"{dataset.replace(':', '/')}/{split}", hub_id=dataset, split=split)


def gsm8k_gold(answer: str) -> str:
    """The reference answer: the number after `####` (thousands commas removed), else the text."""
    final = answer.rsplit("####", 1)[-1] if "####" in answer else answer
    return final.strip().replace(",", "")


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"Cannot read dataset file {path}: {error}.") from error
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"Line {number} of {path} is not valid JSON ({error.msg}). Each line must be one JSON object.") from error
        if not isinstance(row, dict):
            raise UserError(f"Line {number} of {path} is a JSON {type(row).__name__}, not an object with named fields.")
        rows.append((number, row))
    return rows


def _read_hub(source: Source) -> list[tuple[int, dict[str, Any]]]:
    import datasets

    name, _, config = source.hub_id.partition(":")
    try:
        data = datasets.load_dataset(name, config or None, split=source.split)
    except Exception as error:  # the hub raises many kinds; every one means "could not load"
        raise UserError(
            f"Could not load {source.hub_id!r} (split {source.split!r}) from the Hugging Face hub: "
            f"{str(error).splitlines()[0][:300]}. Offline? Save it as JSONL and pass its path to --dataset."
        ) from error
    return [(index + 1, dict(row)) for index, row in enumerate(data)]


def load_rows(
    source: Source, question_field: str, answer_field: str, response_field: str | None, limit: int | None
) -> list[dict[str, str]]:
    """Rows {question_id, question, reference[, response]} in file order, validated."""
    raw = _read_jsonl(source.path) if source.path else _read_hub(source)
    where = str(source.path or source.hub_id)
    if not raw:
        raise UserError(f"Dataset {where} holds no rows.")
    rows = []
    for index, (line, row) in enumerate(raw[:limit]):
        wanted = [question_field, answer_field] + ([response_field] if response_field else [])
        for name in wanted:
            if row.get(name) is None:
                raise UserError(
                    f"Row {line} of {where} has no {name!r} field (it has: {', '.join(sorted(row)) or 'none'}). "
                    "Name the right fields with --question-field, --answer-field or --response-field."
                )
        out = {
            "question_id": str(row["id"]) if row.get("id") is not None else f"{source.name}/{index}",
            "question": str(row[question_field]),
            "reference": gsm8k_gold(str(row[answer_field])),
        }
        if response_field:
            out["response"] = str(row[response_field])
        rows.append(out)
    return rows


def build_items(rows: list[dict[str, str]], samples: int) -> list[Item]:
    """`samples` pending stage-0 items per row. Rows that carry a response become one done item
    each holding it, graded; rows sharing a question id become its successive samples."""
    items, seen = [], Counter()
    for row in rows:
        question = {key: row[key] for key in ("question_id", "question", "reference")}
        if "response" in row:
            result = {"response": row["response"], **grade_response(row["response"], row["reference"])}
            items.append(Item(**question, sample=seen[row["question_id"]], status="done", result=result))
            seen[row["question_id"]] += 1
        else:
            items.extend(Item(**question, sample=sample) for sample in range(samples))
    return items
