"""MAWPS (sroy9/mawps): 2,065 elementary word problems. Its source carries no licence, so it is
not shipped: read from `--data-dir` (`mawps/test.jsonl`)."""

from __future__ import annotations

from typing import Any

from tasks.benchmarks.files import number_text
from tasks.benchmarks.row import Row

NAME = "mawps"
FILES = {"test": "mawps/test.jsonl"}
SHIPPED, LICENCE = False, "none stated by its source"


def to_row(index: int, raw: dict[str, Any], split: str) -> Row:
    return Row(question_id=f"mawps/{raw.get('idx', index)}", question=raw["input"],
               reference=number_text(raw["target"]), metadata={"type": raw.get("type")})
