"""Finished answers on their way to the store: the outbox they wait in, and the breaker that
tells a broken device from items that fail on their own."""

from __future__ import annotations

import time

from tasks.engines import UnanswerableItem
from tasks.worker.results import Outcome


class DeviceBroken(RuntimeError):
    """Every answer of a device fails (a corrupted CUDA context, a dead server)."""


class Outbox:
    """Answers waiting to be written: due when a batch's worth has gathered, or when the oldest
    has waited `flush_seconds`."""

    def __init__(self, *, batch: int, flush_seconds: float):
        self.batch, self.flush_seconds = batch, flush_seconds
        self.waiting: list[Outcome] = []
        self.since = 0.0

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def add(self, outcomes: list[Outcome]) -> None:
        if outcomes and not self.waiting:
            self.since = time.monotonic()
        self.waiting += outcomes

    def due(self) -> bool:
        return len(self.waiting) >= self.batch or bool(self.waiting) and (
            time.monotonic() - self.since >= self.flush_seconds)

    def drain(self) -> list[Outcome]:
        waiting, self.waiting = self.waiting, []
        return waiting


class FailureBreaker:
    """Failed answers are held back as suspects until the device answers something (they were
    then the items' own errors). `limit` in a row with no success trips it: the device is broken,
    and its items go back with no attempt spent."""

    def __init__(self, limit: int):
        self.limit = limit
        self.suspects: list[Outcome] = []

    @property
    def tripped(self) -> bool:
        return len(self.suspects) >= self.limit

    def sort(self, outcomes: list[Outcome]) -> list[Outcome]:
        """The outcomes known to be written now (with the suspects a success cleared), in order."""
        cleared: list[Outcome] = []
        for outcome in outcomes:
            if isinstance(outcome.answer, Exception) and not isinstance(outcome.answer, UnanswerableItem):
                self.suspects.append(outcome)
            else:
                cleared += [*self.suspects, outcome]
                self.suspects = []
        return cleared

    def release(self) -> list[Outcome]:
        """The suspects, as the items' own errors (no more evidence is coming); none once tripped."""
        if self.tripped:
            return []
        suspects, self.suspects = self.suspects, []
        return suspects

    def check(self) -> None:
        if self.tripped:
            error = self.suspects[-1].answer
            raise DeviceBroken(f"{len(self.suspects)} answers in a row failed on this device, none succeeded "
                               f"(last: {type(error).__name__}: {str(error)[:200]}): it stops claiming and gives "
                               "its items back with no attempt spent; the worker's other devices go on")
