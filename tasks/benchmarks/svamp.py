"""SVAMP (arkilpatel/SVAMP, MIT): 1,000 one-step word problems with variations, shipped in
`data/svamp/`. The question is the body and the question joined; rows keep their type."""

from __future__ import annotations

from typing import Any

from tasks.benchmarks.files import number_text
from tasks.benchmarks.row import Row

NAME = "svamp"
FILES = {"test": "svamp/test.jsonl"}
SHIPPED, LICENCE = True, "MIT"


def to_row(index: int, raw: dict[str, Any], split: str) -> Row:
    return Row(question_id=f"svamp/{raw.get('ID', index)}", question=f"{raw['Body'].strip()} {raw['Question'].strip()}",
               reference=number_text(raw["Answer"]), metadata={"type": raw.get("Type")})
