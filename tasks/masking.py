"""Reference solutions shown to the model without their answer (OpenMathInstruct's masked
solutions, for `--prompt masked`)."""

from __future__ import annotations

import re

from tasks.grading.extract import unboxed

CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>
ANSWER_LINE = re.compile(r"\n?####[^\n]*")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")
HIDDEN_ANSWER = "M"  # what a masked solution shows where it held the answer


def numeric_value(text: str) -> float | None:
    """The number a text writes (commas and a dollar sign allowed); None when it is not one."""
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def mask_solution(solution: str, answer: str) -> str:
    """A reference solution that does not give its answer away (OpenMathInstruct's masked
    solutions): GSM8K's calculator notes and `####` line dropped, boxes opened, and every number
    equal to the answer (or, for a non-numeric answer, every occurrence of it) replaced by `M`."""
    text = unboxed(ANSWER_LINE.sub("", CALCULATOR.sub("", solution)))
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    answer = re.sub(r"\\[dt]frac", r"\\frac", answer.strip())
    value = numeric_value(answer)
    if value is not None:
        return NUMBER.sub(lambda match: HIDDEN_ANSWER if numeric_value(match.group()) == value else match.group(),
                          text).strip()
    pattern = r"\s*".join(re.escape(char) for char in answer if not char.isspace())
    return re.sub(pattern, HIDDEN_ANSWER, text).strip() if pattern else text.strip()
