"""Grading: find the final answer in a response (`extract.py`), bring it to one spelling and read
its value (`normalize.py`), and compare it with the reference (`equivalence.py`), symbolically
where it takes algebra (`symbolic.py`, a time-limited process pool that works on any thread)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.grading import symbolic
from tasks.grading.equivalence import quick_verdict
from tasks.grading.extract import extract_answer
from tasks.grading.normalize import normalize, read_value


@dataclass(frozen=True)
class Grade:
    predicted: str | None  # the final answer found in the response; None when there is none
    correct: bool


def grade_many(pairs: list[tuple[str, str]]) -> list[Grade]:
    """(response, reference answer) pairs graded together: the symbolic comparisons of the
    whole batch run in parallel in the pool."""
    predicted = [extract_answer(response) for response, _ in pairs]
    verdicts = [quick_verdict(answer, reference) for answer, (_, reference) in zip(predicted, pairs)]
    open_ones = [index for index, verdict in enumerate(verdicts) if verdict is None]
    calls = [(symbolic.compare_answers, (normalize(pairs[i][1]), normalize(predicted[i] or ""))) for i in open_ones]
    for index, equal in zip(open_ones, symbolic.run_all(calls)):
        verdicts[index] = bool(equal)
    # Where our reading of the answer is not decisive and not equal, math-verify reads the
    # whole response its own way (the answer it finds equal becomes the predicted one).
    second = [i for i, verdict in enumerate(verdicts)
              if not verdict and _undecided(predicted[i], pairs[i][1]) and symbolic.might_read(pairs[i][0])]
    readings = [(symbolic.compare_response, (pairs[i][1], pairs[i][0])) for i in second]
    for index, found in zip(second, symbolic.run_all(readings)):
        if found is not None:
            verdicts[index], predicted[index] = True, found
    return [Grade(answer, bool(verdict)) for answer, verdict in zip(predicted, verdicts)]


def _undecided(predicted: str | None, reference: str) -> bool:
    """Our own reading did not settle it: the prediction or the reference is not an exact value."""
    return predicted is None or read_value(normalize(predicted)) is None or read_value(normalize(reference)) is None


def grade(response: str, reference: str) -> Grade:
    """The answer found in a response, and whether it equals the reference answer."""
    return grade_many([(response, reference)])[0]
