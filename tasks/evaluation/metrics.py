"""Accuracy, refine gains, maj@K, pass@k, no-answer rate and throughput of a run."""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb
from typing import Any

from tasks.grading.equivalence import answer_key
from tasks.refine import latest_answers
from tasks.store.models import STATUSES, Item


def _correct(item: Item | None) -> bool:
    return bool(item and item.status == "done" and item.result and item.result.correct)


def _predicted(item: Item | None) -> str | None:
    return item.result.predicted if item and item.result else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator: 1 - C(n-c, k) / C(n, k) (n samples, c of them correct)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_score(answers: list[tuple[str | None, bool]]) -> float:
    """maj@K for one question as NeMo-Skills scores it: the most frequent predicted answer wins;
    a tie between several scores the share of the tied answers that are correct; no answer
    at all scores 0."""
    votes = Counter((answer_key(predicted), correct) for predicted, correct in answers if predicted is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [correct for (_, correct), count in votes.items() if count == top]
    return sum(tied) / len(tied)


def _ks(samples: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k < samples]
    return ks + [samples]


def evaluate_items(run: str, items: list[Item]) -> dict[str, Any]:
    """Every metric of a run from its items (unanswered questions count as wrong)."""
    chains: dict[tuple[str, int], dict[int, Item]] = defaultdict(dict)
    for item in items:
        chains[(item.question_id, item.sample)][item.stage] = item
    questions = sorted({item.question_id for item in items})
    total = len(questions)
    stages_seen = sorted({item.stage for item in items})
    first = [chains[(q, 0)].get(0) for q in questions]
    correct = sum(map(_correct, first))

    stages, solved = [], set()
    for stage in stages_seen:
        asked = [chains[(q, 0)][stage] for q in questions if stage in chains[(q, 0)]]
        right = {item.question_id for item in asked if _correct(item)}
        solved |= right
        stages.append({"stage": stage, "total": len(asked), "correct": len(right),
                       "accuracy": len(right) / len(asked) if asked else 0.0,
                       "cumulative_correct": len(solved), "cumulative_accuracy": len(solved) / total if total else 0.0})

    result: dict[str, Any] = {"run": run, "total": total, "correct": correct,
                              "accuracy": correct / total if total else 0.0, "stages": stages}
    samples = 1 + max((item.sample for item in items if item.stage == 0), default=0)
    if samples > 1:
        per_question = [[chains[(q, s)].get(0) for s in range(samples)] for q in questions]
        answers = [[(_predicted(i), _correct(i)) for i in row] for row in per_question]
        result["samples"] = samples
        result[f"maj@{samples}"] = sum(map(majority_score, answers)) / total
        for k in _ks(samples):
            result[f"pass@{k}"] = sum(pass_at_k(samples, sum(map(_correct, row)), k) for row in per_question) / total
    done = [item for item in items if item.status == "done"]
    result["no_answer_rate"] = sum(_predicted(i) is None for i in done) / len(done) if done else 0.0
    result["counts"] = {status: sum(item.status == status for item in items) for status in STATUSES}
    result["unfinished"] = sum(item.status in ("pending", "running") for item in latest_answers(items).values())
    result["throughput"] = {"workers": _throughput(done, "worker"), "devices": _throughput(done, "device")}
    return result


def _throughput(done: list[Item], key: str) -> dict[str, dict[str, float]]:
    """Items, generated tokens and tokens/s per worker (or worker/device), from generated items.
    A device's rate is its tokens over its generation seconds; a worker's is the sum of its
    devices' rates, since its devices run in parallel."""
    devices: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for item in done:
        result = item.result
        if result is None or result.seconds is None:
            continue  # brought-your-own responses carry no timing
        sums = devices[(result.worker or "?", result.device or "?")]
        sums[0] += 1
        sums[1] += result.tokens or 0
        sums[2] += result.seconds
    table: dict[str, dict[str, float]] = {}
    for (worker, device), (n, tokens, seconds) in sorted(devices.items()):
        row = table.setdefault(worker if key == "worker" else f"{worker}/{device}",
                               {"items": 0, "tokens": 0, "tokens_per_second": 0.0})
        row["items"] += int(n)
        row["tokens"] += int(tokens)
        row["tokens_per_second"] = round(row["tokens_per_second"] + (tokens / seconds if seconds else 0.0), 1)
    return table
