"""GSM-Hard (reasoning-machines/pal): GSM8K's test questions with larger numbers, 1,319 rows.
Its source carries no licence, so it is not shipped: read from `--data-dir` (`gsm-hard/test.jsonl`)."""

from __future__ import annotations

from typing import Any

from tasks.benchmarks.files import number_text
from tasks.benchmarks.row import Row

NAME = "gsm-hard"
FILES = {"test": "gsm-hard/test.jsonl"}
SHIPPED, LICENCE = False, "none stated by its source"


def to_row(index: int, raw: dict[str, Any], split: str) -> Row:
    return Row(question_id=f"gsm-hard/{raw.get('idx', index)}", question=raw["input"],
               reference=number_text(raw["target"]))
