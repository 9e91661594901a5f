"""Refine rounds: re-ask every question whose latest answer is wrong or missing."""

from __future__ import annotations

from tasks.store.models import Item


def latest_answers(items: list[Item]) -> dict[tuple[str, int], Item]:
    """The highest-stage item of each (question id, sample) chain."""
    latest: dict[tuple[str, int], Item] = {}
    for item in items:
        key = (item.question_id, item.sample)
        if key not in latest or item.stage > latest[key].stage:
            latest[key] = item
    return latest


def retry_items(items: list[Item], max_rounds: int) -> list[Item]:
    """One next-stage item for each chain whose latest answer is wrong (done, not correct) or
    missing (failed), up to stage `max_rounds`; chains still pending or running wait."""
    retries = []
    for item in latest_answers(items).values():
        wrong = item.status == "done" and not (item.result and item.result.correct)
        if item.stage < max_rounds and (wrong or item.status == "failed"):
            retries.append(Item(question_id=item.question_id, question=item.question, reference=item.reference,
                                stage=item.stage + 1, sample=item.sample, metadata=item.metadata,
                                previous=item.result.response if item.result else None))
    return retries
