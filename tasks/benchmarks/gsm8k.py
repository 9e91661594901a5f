"""GSM8K (openai/grade-school-math, MIT): the copy shipped in `data/gsm8k/` (train 7,473, test
1,319). References are the number after `####`; question ids are `gsm8k/<split>/<row index>`."""

from __future__ import annotations

from pathlib import Path

from tasks.benchmarks.files import Source
from tasks.errors import UserError

NAME = "gsm8k"
FOLDER = Path(__file__).resolve().parents[2] / "data" / "gsm8k"
SPLITS = ("train", "test")


def source(split: str) -> Source:
    if split not in SPLITS:
        raise UserError(f"GSM8K has splits {', '.join(SPLITS)}, not {split!r}. Pass --split train or --split test.")
    return Source(f"{NAME}/{split}", path=FOLDER / f"{split}.jsonl", split=split)
