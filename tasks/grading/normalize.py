"""Answers brought to one spelling, and read as exact values where they are numbers.

`normalize` removes what does not change an answer's meaning (delimiters, `\\left`, spacing
commands, `\\text{}`/`\\mathcal{}` wrappers, degree signs, `\\dfrac` for `\\frac`, malformed
`\\frac34`, `pmatrix` for `bmatrix`) and spells the rest one way: vulgar fractions (`2½` is
`2 1/2`), percent in words (`33.5 percent`, `pct`), Indian digit grouping (`56,01,78,95,760`).
`read_value` reads a number the way a GSM8K/MATH user writes it: `$1,234.50`, `1 000`, `.5`, `3/4`,
`\\frac{3}{4}`, `1 1/2` and `2\\frac{1}{2}` (mixed), `75%`, `1.5 \\times 10^3`, `12 apples`; a
parenthesised list as a tuple (order matters: a point), `\\{...\\}` as a set, and a plain list
(`1, -2`, the answers to "find all") in any order. A comma is a thousands separator only between
groups of three digits (`1,234`, LaTeX's `11,\\! 111`); `1,22` reads as a list here, and
`decimal_comma` gives its other reading, a decimal point (see equivalence.py). `x = 5` reads as
`5` where the name is a plain variable.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

from tasks.grading.extract import strip_math

DROPPED = [r"\\left\b", r"\\right\b", r"\\displaystyle\b", r"\\q?quad", r"(?<!\\)\\[!,;: ]", r"~",
           r"\^\s*\{\s*\\circ\s*\}", r"\^\s*\\circ\b", r"°", r"\\degree\b", r"\{,\}", r"\\\$", r"\$"]
WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mathcal|mbox|operatorname)\s*\{([^{}]*)\}")
VULGAR = re.compile(r"(\d*)\s*([\u00bc-\u00be\u2150-\u215e])")  # 2½, ½, ⅔
INDIAN = re.compile(r"(?<![\d,])-?\d{1,2}(?:,\d{2})+,\d{3}(?![\d,])")  # 56,01,78,95,760
PERCENT_WORD = re.compile(r"(?<=[\d}])\s*(?:percent|per\s+cent|pct)\b\.?", re.I)
STOP_WORDS = {"and", "or", "plus", "minus", "times", "half", "halves", "third", "thirds", "quarter", "quarters",
              "more", "less", "than", "of", "over", "divided", "by", "to", "is", "are", "not", "no", "if", "when"}
NAMED = re.compile(r"^\s*[A-Za-z]{1,3}(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*=\s*(?=\S)")  # `x = `, `AB=`, `f(x) =`
NUMBER = r"-?(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?: \d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\.\d+"


@dataclass(frozen=True)
class Number:
    value: Fraction
    percent: bool = False  # written with %: equal to both `p` and `p/100`
    decimal: bool = False  # written with a decimal point: compared to 6 decimal places


@dataclass(frozen=True)
class Listed:
    """An unbracketed list (`1, -2`): the answers to "find all", in any order."""

    items: tuple["Value", ...]


Value = Number | Listed | tuple["Value", ...] | frozenset["Value"]


def _vulgar(match: re.Match[str]) -> str:
    fraction = Fraction(unicodedata.numeric(match.group(2))).limit_denominator(10)
    return f"{match.group(1)} {fraction.numerator}/{fraction.denominator}".strip()


def normalize(answer: str) -> str:
    text = VULGAR.sub(_vulgar, strip_math(answer).replace("\u2044", "/"))  # and the fraction slash
    text = INDIAN.sub(lambda match: match.group(0).replace(",", ""), text)
    text = re.sub(r"\\(begin|end)\{pmatrix\}", r"\\\1{bmatrix}", text)
    text = re.sub(r"(\d),\\[!,]\s*(?=\d{3}\b)", r"\1,", text)  # LaTeX thousands: 11,\! 111 (not `10, 400`)
    text = re.sub(r"\\[dtc]frac", r"\\frac", text)
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)  # \frac34
    text = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", text)  # \frac3{4}
    text = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", text)  # \frac{3}4
    text = re.sub(r"\\sqrt\s*(\d+|[a-zA-Z])", r"\\sqrt{\1}", text)  # \sqrt3
    for pattern in DROPPED:
        text = re.sub(pattern, " ", text)
    for _ in range(3):
        text = WRAPPERS.sub(r" \1 ", text)
    text = PERCENT_WORD.sub("%", text)
    text = re.sub(r"\\\\(?=[a-zA-Z])", r"\\", text.replace("\\%", "%"))  # `\\frac`, not a row break
    text = re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
    return ", ".join(_unnamed(part) for part in _split_top_level(text)) if "=" in text else text


def _unnamed(part: str) -> str:
    """`x = 5` and `5 = x` read as `5` (a plain variable's name dropped); other equations stay."""
    if part.count("=") != 1:
        return part
    if NAMED.match(part):
        return NAMED.sub("", part, count=1)
    left, right = part.split("=")
    return left.strip() if NAMED.match(f"{right.strip()}=0") else part


def _unit_free(text: str) -> str | None:
    """`text` without a trailing unit (`12 apples`, `5 km per hour`, `3 square feet`); None when
    the words after the number are not a unit (`5 and a half`)."""
    match = re.fullmatch(r"(.*?\d%?)\s*([A-Za-z][A-Za-z ./]*)?", text)
    if not match or not match.group(2):
        return text
    words = re.findall(r"[A-Za-z]+", match.group(2).lower())
    return match.group(1) if len(words) <= 3 and not STOP_WORDS & set(words) else None


def _number(text: str) -> Number | None:
    text = text.strip()
    text = re.sub(r"^(?:\\?\$|€|£|USD\s*)", "", text).strip()
    percent = text.endswith("%")
    text = text.rstrip("%").strip()
    if (scientific := re.fullmatch(rf"({NUMBER})\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?\s*(-?\d+)\s*\}}?", text)):
        base = _number(scientific.group(1))
        return Number(base.value * Fraction(10) ** int(scientific.group(2)), percent) if base else None
    if re.fullmatch(r"-?\d+(?:\.\d+)?[eE][-+]?\d+", text):
        return Number(Fraction(text), percent, decimal=True)
    mixed = re.fullmatch(r"(-?)(\d+)\s*(?:\s|\\frac|(?=\{))\s*\{?(\d+)\}?\s*(?:/|\}\s*\{)\s*(\d+)\}?", text)
    if mixed and int(mixed.group(4)) and "frac" in text or mixed and re.fullmatch(r"-?\d+\s+\d+\s*/\s*\d+", text):
        whole = int(mixed.group(2)) + Fraction(int(mixed.group(3)), int(mixed.group(4)))
        return Number(-whole if mixed.group(1) else whole, percent)
    fraction = re.fullmatch(rf"(-?)\\frac\{{({NUMBER})\}}\{{({NUMBER})\}}|({NUMBER})\s*/\s*({NUMBER})", text)
    if fraction:
        sign, top, bottom = (fraction.group(1), fraction.group(2), fraction.group(3)) if fraction.group(2) else (
            "", fraction.group(4), fraction.group(5))
        numerator, denominator = _number(top), _number(bottom)
        if numerator is None or denominator is None or denominator.value == 0:
            return None
        value = numerator.value / denominator.value
        return Number(-value if sign else value, percent)
    if re.fullmatch(NUMBER, text):
        return Number(Fraction(text.replace(",", "").replace(" ", "")), percent, decimal="." in text)
    return None


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [*parts, text[start:]]


def _number_with_unit(text: str) -> Number | None:
    unit_free = _unit_free(text)
    return _number(unit_free) if unit_free is not None else None


def decimal_comma(answer: str) -> str | None:
    """The other reading of a number with a comma that cannot separate thousands (`1,22`,
    `0,111`, `1000,99`): a decimal comma, as much of Europe writes it. None for any other text."""
    if re.fullmatch(r"-?\d+,\d+", answer.strip()) and not re.fullmatch(NUMBER, answer.strip()):
        return answer.strip().replace(",", ".")
    return None


def read_value(answer: str) -> Value | None:
    """The exact value of a normalized answer, when it is a number or a list, tuple or set of them."""
    text = answer.strip()
    if text.startswith("\\{") and text.endswith("\\}"):
        members = [read_value(part) for part in _split_top_level(text[2:-2])]
        return None if None in members else frozenset(members)  # type: ignore[arg-type]
    bracketed = len(text) > 1 and text[0] == "(" and text[-1] == ")"
    parts = _split_top_level(text[1:-1] if bracketed else text)
    if len(parts) > 1 and (bracketed or _number_with_unit(text) is None):  # `1,234` is one number
        items = [read_value(part) for part in parts]
        if None in items:
            return None
        return tuple(items) if bracketed else Listed(tuple(items))  # type: ignore[arg-type]
    return _number_with_unit(text[1:-1] if bracketed else text)


def values_equal(first: Value, second: Value) -> bool:
    if isinstance(first, Number) and isinstance(second, Number):
        if first.percent != second.percent:
            plain, percent = (first, second) if second.percent else (second, first)
            return plain.value in (percent.value, percent.value / 100)
        if first.decimal or second.decimal:
            return round(float(first.value), 6) == round(float(second.value), 6)
        return first.value == second.value
    if isinstance(first, tuple) and isinstance(second, tuple):
        return len(first) == len(second) and all(values_equal(a, b) for a, b in zip(first, second))
    if isinstance(first, (frozenset, Listed)) and isinstance(second, (frozenset, Listed)):
        left = list(first.items if isinstance(first, Listed) else first)
        right = list(second.items if isinstance(second, Listed) else second)
        for item in left:  # a matching, each answer used once
            match = next((index for index, other in enumerate(right) if values_equal(item, other)), None)
            if match is None:
                return False
            right.pop(match)
        return not right
    return False
