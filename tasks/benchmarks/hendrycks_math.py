"""MATH (hendrycks/math, MIT): competition problems in LaTeX, test split of 5,000, shipped in
`data/math/`. References are the last `\\boxed{}` of the solution; each row keeps its level (1-5)
and subject. `--subset 500` is the common MATH-500 subset (PRM800K's test split), ids listed in
`data/math/math500.txt`."""

from __future__ import annotations

from typing import Any

from tasks.benchmarks.row import Row
from tasks.grading.extract import reference_answer

NAME = "math"
FILES = {"test": "math/test.jsonl"}
SHIPPED, LICENCE = True, "MIT"
NAMED_SUBSETS = {500: "math/math500.txt"}


def to_row(index: int, raw: dict[str, Any], split: str) -> Row:
    level_text = str(raw["level"]).removeprefix("Level ")
    level = int(level_text) if level_text.isdigit() else None
    return Row(question_id=f"math/{raw.get('idx', index)}", question=raw["problem"],
               reference=reference_answer(raw["solution"]), metadata={"level": level, "subject": raw["type"]},
               solution=raw["solution"])
