"""Answer extraction and grading over the forms GSM8K responses take."""

from __future__ import annotations

import pytest

from tasks.benchmarks import load_rows, resolve_source
from tasks.grading.equivalence import is_correct
from tasks.grading.extract import extract_answer, reference_answer


@pytest.mark.parametrize("text, answer", [
    ("Janet sells 9 eggs.\n#### 18", "18"),
    ("so the total is \\boxed{\\frac{3}{4}} and that's it", "\\frac{3}{4}"),
    ("Adding up gives 5. The answer is 42.", "42"),
    ("The answer is: $1,234.", "$1,234"),
    ("Final answer: 7 apples", "7"),
    ("The final answer is **-3**", "-3"),
    ("Q: what?\nSome work 2 + 3\nA: 5", "5"),
    ("First 3 then 4, so 12 in total", "12"),
    ("#### 3 \n later text #### 4", "4"),
    ("no digits here at all", None),
    ("", None),
])
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


@pytest.mark.parametrize("predicted, reference", [
    ("18", "18"), ("1,234", "1234"), ("$18", "18"), ("18.00", "18"), ("14.", "14"),
    ("75%", "75"), ("12 apples", "12"), ("3/4", "0.75"), ("-2", "-2"), ("\\frac{1}{2}", "0.5"),
    ("\\$5", "5"), ("5\\%", "5"), ("10\\text{ dollars}", "10"), ("\\sqrt{2}", "\\sqrt 2"),
    ("\\boxed{18}", "18"),
])
def test_equal_forms_are_correct(predicted: str, reference: str) -> None:
    assert is_correct(predicted, reference)


@pytest.mark.parametrize("predicted, reference", [
    ("17", "18"), (None, "18"), ("", "18"), ("1/0", "1"), ("18.5", "18"), ("apples", "18"), ("\\sqrt{3}", "\\sqrt 2"),
])
def test_different_answers_are_wrong(predicted: str | None, reference: str) -> None:
    assert not is_correct(predicted, reference)


@pytest.mark.parametrize("solution, reference", [
    ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("so 1,000 + 234\n#### 1,234", "1234"),
    ("#### -3", "-3"),
    ("42", "42"),
])
def test_reference_answer(solution: str, reference: str) -> None:
    assert reference_answer(solution) == reference


def test_gsm8k_references_grade_their_own_solutions() -> None:
    rows = load_rows(resolve_source("gsm8k", "test"), response_field="answer", limit=200)
    assert all(is_correct(extract_answer(row.response), row.reference) for row in rows)
