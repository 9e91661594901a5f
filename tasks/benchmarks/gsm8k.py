"""GSM8K (openai/grade-school-math, MIT): grade-school word problems, shipped in `data/gsm8k/`
(train 7,473, test 1,319). References are the number after `####`; ids `gsm8k/<split>/<row>`."""

from __future__ import annotations

from typing import Any

from tasks.benchmarks.row import Row
from tasks.grading.extract import reference_answer

NAME = "gsm8k"
FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
SHIPPED, LICENCE = True, "MIT"


def to_row(index: int, raw: dict[str, Any], split: str) -> Row:
    return Row(question_id=f"gsm8k/{split}/{index}", question=raw["question"],
               reference=reference_answer(raw["answer"]), solution=raw["answer"])
