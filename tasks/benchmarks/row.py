"""The one shape every benchmark adapter gives its rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    question_id: str  # stable across seedings: the benchmark's own id where it has one
    question: str
    reference: str  # the reference answer (not the whole solution)
    response: str | None = None  # a response generated elsewhere (bring your own)
    solution: str | None = None  # the reference solution, where the dataset has one
    metadata: dict[str, Any] | None = None  # e.g. MATH's level and subject
