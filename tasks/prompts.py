"""Prompt templates: plain text files in `prompts/` with `{field}` placeholders."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tasks.errors import UserError

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


def available() -> list[str]:
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.txt"))


def template_text(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise UserError(f"No prompt template {name!r} in {PROMPTS_DIR}. Templates there: {', '.join(available())}.")
    return path.read_text(encoding="utf-8").strip()


def question_templates() -> list[str]:
    """The templates a worker can ask questions with (those with a `{question}` placeholder)."""
    return [name for name in available() if "{question}" in template_text(name)]


def prompt_hash(*names: str) -> str:
    """A short fingerprint of the templates' texts: answers made with edited prompts differ."""
    return hashlib.sha256("\n\n".join(template_text(name) for name in names).encode()).hexdigest()[:16]


def render(name: str, **fields: str) -> str:
    """Fill a template's `{field}` placeholders (other braces, e.g. LaTeX, are left alone)."""
    template = template_text(name)
    missing = set(re.findall(r"\{(\w+)\}", template)) - set(fields)
    if missing:
        raise UserError(f"Prompt template {name!r} needs {', '.join(sorted(missing))}, which this flow does not "
                        "provide.")
    return re.sub(r"\{(\w+)\}", lambda match: fields[match.group(1)], template)
