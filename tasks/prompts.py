"""Prompt templates: plain text files in `prompts/` with `{field}` placeholders."""

from __future__ import annotations

import re
from pathlib import Path

from tasks.cli import UserError

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


def available() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.txt"))


def question_templates() -> list[str]:
    """The templates a worker can ask questions with (those with a `{question}` placeholder)."""
    return [name for name in available() if "{question}" in (PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8")]


def check_question_template(name: str) -> None:
    if name not in question_templates():
        raise UserError(f"--prompt {name!r} is not a question template in {PROMPTS_DIR}: use one of "
                        f"{', '.join(question_templates())}, or add a .txt file there with a {{question}} placeholder.")


def render(name: str, **fields: str) -> str:
    """Fill a template's `{field}` placeholders (other braces, e.g. LaTeX, are left alone)."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise UserError(f"No prompt template {name!r} in {PROMPTS_DIR}. Templates there: {', '.join(available())}.")
    template = path.read_text(encoding="utf-8").strip()
    missing = set(re.findall(r"\{(\w+)\}", template)) - set(fields)
    if missing:
        raise UserError(f"Prompt template {name!r} needs {', '.join(sorted(missing))}, which this flow does not provide.")
    return re.sub(r"\{(\w+)\}", lambda match: fields[match.group(1)], template)
