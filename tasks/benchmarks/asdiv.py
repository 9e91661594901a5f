"""ASDiv (chaochun/nlu-asdiv-dataset, CC BY-NC 4.0): 2,215 diverse word problems. Non-commercial,
so not shipped: read from `--data-dir` (`asdiv/test.jsonl`). An answer like `9 (apples)` keeps
the number; 180 answers are words or times (`Mrs. Hilt`, `3:30 p.m.`), kept as text."""

from __future__ import annotations

import re
from typing import Any

from tasks.benchmarks.row import Row

NAME = "asdiv"
FILES = {"test": "asdiv/test.jsonl"}
SHIPPED, LICENCE = False, "CC BY-NC 4.0"


def to_row(index: int, raw: dict[str, Any], split: str) -> Row:
    answer = re.sub(r"\s*\([^()]*\)\s*$", "", str(raw["answer"])).strip()  # `9 (apples)` -> `9`
    return Row(question_id=f"asdiv/{raw.get('idx', index)}",
               question=f"{raw['body'].strip()} {raw['question'].strip()}", reference=answer,
               metadata={"type": raw.get("solution_type")})
