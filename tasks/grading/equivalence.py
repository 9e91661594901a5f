"""Whether a predicted answer equals the reference: exact numbers first, then math-verify."""

from __future__ import annotations

import re
from fractions import Fraction

LATEX_NOISE = [(r"\\text\{[^}]*\}", ""), (r"\\%", "%"), (r"\\\$", "$"), (r"\\[,!;: ]", "")]


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


def answer_key(predicted: str) -> str:
    """What a majority vote counts: equal numbers vote together (`18`, `$18.00`)."""
    number = to_number(predicted)
    return str(number) if number is not None else predicted.strip()
