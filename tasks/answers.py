"""Final answers: find them in a model's response and compare them with the reference."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?"
HASHES = re.compile(r"####\s*(.+)")
PHRASES = [
    re.compile(r"final\s+answer\s*(?:is|:)\s*(.+)", re.I),
    re.compile(r"the\s+answer\s+is\s*:?\s*(.+)", re.I),
]
LATEX_NOISE = [(r"\\text\{[^}]*\}", ""), (r"\\%", "%"), (r"\\\$", "$"), (r"\\[,!;: ]", "")]
LAST_LINE_ANSWER = re.compile(r"^\s*A\s*:\s*(.+?)\s*$", re.I)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth < 0:
            return text[begin:index].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip().strip("*").strip()
    number = re.match(NUMBER, answer)
    return number.group(0).replace(" ", "") if number else answer.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer in a response: `####`, `\\boxed{}`, "final answer:", "The answer is",
    a last line `A: N`, else the last number; None when there is none."""
    if found := HASHES.findall(text):
        return _clean(found[-1])
    if boxed := _boxed(text):
        return boxed
    for phrase in PHRASES:
        if found := phrase.findall(text):
            return _clean(found[-1])
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines and (last := LAST_LINE_ANSWER.match(lines[-1])):
        return _clean(last.group(1))
    numbers = re.findall(NUMBER, text)
    return _clean(numbers[-1]) if numbers else None


def to_number(text: str) -> Fraction | None:
    """A GSM8K-style number: `$1,234.00`, `75%`, `12 apples`, `3/4`, `-2.` -> exact Fraction."""
    for pattern, replacement in LATEX_NOISE:
        text = re.sub(pattern, replacement, text)
    text = text.replace("$", "").replace(",", "").strip().rstrip(".").strip()
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?\s*(%|[a-zA-Z][a-zA-Z .]*)?", text)
    if not match:
        return None
    value = Fraction(match.group(1))
    if match.group(2):
        if int(match.group(2)) == 0:
            return None
        value /= int(match.group(2))
    return value


def is_correct(predicted: str | None, reference: str) -> bool:
    """Numbers compare exactly after GSM8K clean-up; anything else through math-verify (LaTeX,
    symbolic forms)."""
    if predicted is None or not predicted.strip():
        return False
    mine, gold = to_number(predicted), to_number(reference)
    if mine is not None and gold is not None:
        return mine == gold
    from math_verify import parse, verify

    def as_latex(text: str) -> str:
        return text if "$" in text or "\\boxed" in text else f"${text}$"

    try:
        return bool(verify(parse(as_latex(reference)), parse(as_latex(predicted))))
    except Exception:  # math-verify gives up on some inputs: then they are not equal
        return False


def grade_response(response: str, reference: str) -> dict[str, Any]:
    """The answer found in a response and whether it is right."""
    predicted = extract_answer(response)
    return {"predicted": predicted, "correct": is_correct(predicted, reference)}
