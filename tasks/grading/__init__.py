"""Grading: find the final answer in a response (`extract.py`) and compare it with the reference
(`equivalence.py`)."""

from __future__ import annotations

from tasks.grading.equivalence import is_correct
from tasks.grading.extract import extract_answer


def grade_response(response: str, reference: str) -> tuple[str | None, bool]:
    """The answer found in a response, and whether it is right."""
    predicted = extract_answer(response)
    return predicted, is_correct(predicted, reference)
