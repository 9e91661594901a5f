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
        raise UserError(f"Prompt template {name!r} needs {', '.join(sorted(missing))}, which this flow does not provide.")
    return re.sub(r"\{(\w+)\}", lambda match: fields[match.group(1)], template)


CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>
ANSWER_LINE = re.compile(r"\n?####[^\n]*")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")
HIDDEN_ANSWER = "M"  # what a masked solution shows where it held the answer


def _value(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def unboxed(text: str) -> str:
    """`\\boxed{x}` replaced by `x` everywhere."""
    from tasks.grading.extract import BOXED, _braced

    while match := BOXED.search(text):
        content = _braced(text, match.end() - 1)
        if content is None:
            return text[:match.start()] + text[match.end():]
        text = text[:match.start()] + content + text[match.end() + len(content) + 1:]
    return text


def mask_solution(solution: str, answer: str) -> str:
    """A reference solution that does not give its answer away (OpenMathInstruct's masked
    solutions): GSM8K's calculator notes and `####` line dropped, boxes opened, and every number
    equal to the answer (or, for a non-numeric answer, every occurrence of it) replaced by `M`."""
    text = unboxed(ANSWER_LINE.sub("", CALCULATOR.sub("", solution)))
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    answer = re.sub(r"\\[dt]frac", r"\\frac", answer.strip())
    value = _value(answer)
    if value is not None:
        return NUMBER.sub(lambda match: HIDDEN_ANSWER if _value(match.group()) == value else match.group(), text).strip()
    pattern = r"\s*".join(re.escape(char) for char in answer if not char.isspace())
    return re.sub(pattern, HIDDEN_ANSWER, text).strip() if pattern else text.strip()
