"""Whether a predicted answer equals the reference.

In this order: exact values (numbers, percents both ways, units, tuples, sets: decisive when both
sides are such values; a comma that cannot separate thousands read either way, as a list or a
decimal comma, so `1000,99` equals `1000.99` and `1000, 99`); the same text once normalized (case
aside); else math-verify's symbolic comparison in the time-limited pool
(`tasks/grading/symbolic.py`).
"""

from __future__ import annotations

import re

from tasks.grading import symbolic
from tasks.grading.normalize import Listed, Number, Value, decimal_comma, normalize, read_value, values_equal


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def quick_verdict(predicted: str | None, reference: str) -> bool | None:
    """True or False when exact values or normalized text decide; None when it takes algebra."""
    if predicted is None or not predicted.strip():
        return False
    mine, gold = normalize(predicted), normalize(reference)
    mine_value, gold_value = read_value(mine), read_value(gold)
    if mine_value is not None and gold_value is not None:
        return values_equal(mine_value, gold_value) or _equal_with_a_decimal_comma(mine, gold)
    if _squash(mine) == _squash(gold):
        return True
    return None


def _equal_with_a_decimal_comma(mine: str, gold: str) -> bool:
    """Either side read with its comma as a decimal point, against a single number on the other."""
    for text, other in ((mine, gold), (gold, mine)):
        reading, other_value = decimal_comma(text), read_value(other)
        if reading is not None and isinstance(other_value, Number):
            value = read_value(reading)
            if value is not None and values_equal(value, other_value):
                return True
    return False


def is_correct(predicted: str | None, reference: str) -> bool:
    verdict = quick_verdict(predicted, reference)
    if verdict is not None:
        return verdict
    (equal,) = symbolic.run_all([(symbolic.compare_answers, (normalize(reference), normalize(predicted or "")))])
    return bool(equal)


def answer_key(predicted: str) -> str:
    """What a majority vote counts: equal values vote together however they are written (`1/2`,
    `0.5`, `\\frac{1}{2}`; `18`, `$18.00`, `18 apples`), other answers by their normalized text."""
    normalized = normalize(predicted)
    value = read_value(normalized)
    return _key(value) if value is not None else _squash(normalized)


def _key(value: Value) -> str:
    if isinstance(value, Number):
        return str(value.value)  # `50%` votes with `50`, the way percent questions are answered
    if isinstance(value, tuple):
        return "(" + ",".join(map(_key, value)) + ")"
    items = value.items if isinstance(value, Listed) else value
    return "{" + ",".join(sorted(map(_key, items))) + "}"
