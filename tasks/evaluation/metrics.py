"""Accuracy, refine gains, pass@k, maj@k, no-answer rate, breakdowns and throughput of a run.

Each question counts the samples it really has: pass@k and maj@k use the questions with at least
k answered samples (and say how many those are), never padding a question with wrong answers.
Answers made in different ways (engine, model, prompt, sampling) are never merged in one figure.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from math import comb
from typing import Any

from tasks.config import SamplingConfig
from tasks.errors import UserError
from tasks.grading.equivalence import answer_key
from tasks.refine import latest_answers
from tasks.store.models import SAMPLING_STATUSES, STATUSES, Item, Result
from tasks.throughput import combined_rate

FINISHED = ("done", "failed")


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
    """maj@k for one question as NeMo-Skills scores it: the most frequent answer wins (equal
    values vote together: `1/2`, `0.5`, `\\frac{1}{2}`); a tie scores the share of the tied answers
    that are correct; no answer at all scores 0."""
    votes = Counter((answer_key(predicted), correct) for predicted, correct in answers if predicted is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [correct for (_, correct), count in votes.items() if count == top]
    return sum(tied) / len(tied)


def made_with(item: Item) -> str | None:
    """How an answer was made, as one comparable text (None for responses brought from elsewhere);
    sampling settings newer than the answer read as their defaults, which it was made with."""
    result = item.result
    if result is None or result.engine is None:
        return None
    provenance = result.provenance()
    provenance["sampling"] = {**SamplingConfig().model_dump(), **(provenance["sampling"] or {})}
    return json.dumps(provenance, sort_keys=True)


def check_one_way_per_stage(run: str, items: list[Item]) -> dict[str, Any] | None:
    """UserError when answers of one stage were made in different ways; else how stage 0 was made
    (as its first answer records it)."""
    ways: dict[int, Counter[str]] = defaultdict(Counter)
    recorded: dict[int, dict[str, Any]] = {}
    for item in items:
        if item.status == "done" and (way := made_with(item)) is not None:
            ways[item.stage][way] += 1
            recorded.setdefault(item.stage, json.loads(json.dumps(item.result.provenance() if item.result else {},
                                                                  sort_keys=True)))  # keys in order, as shown
    for stage, counted in sorted(ways.items()):
        if len(counted) > 1:
            listed = "; ".join(f"{n} answers made with {way}" for way, n in counted.most_common())
            raise UserError(
                f"Run {run!r} holds stage-{stage} answers made in {len(counted)} different ways: {listed}. Figures "
                "over them would mix models or settings. Seed one run per way of answering (or export the rows: each "
                "row says how it was made).")
    return recorded.get(0)


def ks_to_report(samples: int) -> list[int]:
    """The k for pass@k and maj@k of questions with this many samples: powers of two below it, and itself."""
    return [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k < samples] + [samples]


def sample_metrics(questions: list[list[Item]]) -> dict[str, Any]:
    """pass@k and maj@k from each question's answered stage-0 samples (n may differ per question)."""
    answered = [[item for item in samples if item.status in FINISHED] for samples in questions]
    counts = [len(samples) for samples in answered if samples]
    if not counts:
        return {}
    result: dict[str, Any] = {"samples": max(counts), "samples_min": min(counts)}
    for k in ks_to_report(max(counts)):
        eligible = [samples for samples in answered if len(samples) >= k]
        result[f"pass@{k}"] = sum(pass_at_k(len(s), sum(map(_correct, s)), k) for s in eligible) / len(eligible)
        result[f"maj@{k}"] = sum(majority_score([(_predicted(i), _correct(i)) for i in s[:k]])
                                 for s in eligible) / len(eligible)
        result[f"questions@{k}"] = len(eligible)
    return result


def breakdown(first: dict[str, Item | None], field: str) -> dict[str, dict[str, Any]]:
    """Accuracy at the first attempt per value of a metadata field (MATH: level, subject)."""
    groups: dict[str, list[Item | None]] = defaultdict(list)
    for item in first.values():
        if item is not None and item.metadata and item.metadata.get(field) is not None:
            groups[str(item.metadata[field])].append(item)
    return {value: {"questions": len(members), "correct": sum(map(_correct, members)),
                    "accuracy": sum(map(_correct, members)) / len(members)}
            for value, members in sorted(groups.items())}


def evaluate_items(run: str, items: list[Item]) -> dict[str, Any]:
    """Every metric of a run from its items (questions not answered yet count as wrong, and are counted)."""
    way = check_one_way_per_stage(run, items)
    chains: dict[tuple[str, int], dict[int, Item]] = defaultdict(dict)
    for item in items:
        chains[(item.question_id, item.sample)][item.stage] = item
    questions = sorted({item.question_id for item in items})
    total = len(questions)
    first = {q: chains[(q, 0)].get(0) for q in questions}
    correct = sum(map(_correct, first.values()))
    stages, solved = [], set()
    for stage in sorted({item.stage for item in items}):
        asked = [chains[(q, 0)][stage] for q in questions if stage in chains[(q, 0)]]
        right = {item.question_id for item in asked if _correct(item)}
        solved |= right
        stages.append({"stage": stage, "total": len(asked), "correct": len(right),
                       "accuracy": len(right) / len(asked) if asked else 0.0,
                       "cumulative_correct": len(solved), "cumulative_accuracy": len(solved) / total if total else 0.0})
    by_question: dict[str, list[Item]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i.sample):
        if item.stage == 0:
            by_question[item.question_id].append(item)
    done = [item for item in items if item.status == "done"]
    return {
        "run": run, "total": total, "correct": correct, "accuracy": correct / total if total else 0.0,
        "made_with": way, "stages": stages, **sample_metrics(list(by_question.values())),
        "no_answer_rate": sum(_predicted(i) is None for i in done) / len(done) if done else 0.0,
        "counts": {**{status: sum(item.status == status for item in items) for status in STATUSES},
                   **{status: n for status in SAMPLING_STATUSES
                      if (n := sum(item.status == status for item in items))}},
        "unfinished": sum(item.status in ("pending", "running") for item in latest_answers(items).values()),
        "by": {field: table for field in ("level", "subject") if (table := breakdown(first, field))},
        "throughput": {"workers": _throughput(done, "worker"), "devices": _throughput(done, "device")},
        "code": code_metrics(done),
        "reasoning": reasoning_metrics(done),
        "sampling": sampling_metrics(by_question),
        "judge": judge_metrics([item for item in first.values() if item is not None], correct, total),
    }


def sampling_metrics(by_question: dict[str, list[Item]]) -> dict[str, Any] | None:
    """Where questions have several samples: the hard set (no correct answer among those made),
    how many questions got 0, 1, 2, ... correct answers, and the compute spent (None: one sample each)."""
    if all(len(samples) <= 1 for samples in by_question.values()):
        return None
    made = {question: [item for item in samples if item.status in FINISHED]
            for question, samples in by_question.items()}
    right = {question: sum(map(_correct, samples)) for question, samples in made.items()}
    tokens = [sum(item.result.tokens or 0 for item in samples if item.result) for samples in made.values()]
    return {"hard": sorted(question for question, n in right.items() if n == 0 and made[question]),
            "correct_counts": dict(sorted(Counter(right.values()).items())),
            "samples_made": sum(map(len, made.values())),
            "cancelled": sum(item.status == "cancelled" for samples in by_question.values() for item in samples),
            "tokens_per_question": sum(tokens) / len(tokens)}


def judge_metrics(first: list[Item], correct: int, total: int) -> dict[str, Any] | None:
    """Accuracy at the first attempt with an LLM judge's verdicts added where the rules could not
    read the answer (None: nothing judged); the rules' own accuracy stays as it is."""
    judged = [(item.result, item.result.judge) for item in first if item.result is not None and item.result.judge]
    if not judged:
        return None
    added = sum(1 for result, judge in judged if not result.correct and judge.get("correct"))
    return {"judged": len(judged), "judged_correct": added, "accuracy_with_judge": (correct + added) / total,
            "models": sorted({str(judge.get("model")) for _, judge in judged})}


def code_metrics(done: list[Item]) -> dict[str, Any] | None:
    """For answers made with code execution: the share that ran code, executions per answer, the
    share of executions that failed, and accuracy with code and without (None: no such answers)."""
    tooled = [item.result for item in done if item.result is not None and item.result.code_executions is not None]
    if not tooled:
        return None
    used = [result for result in tooled if result.code_executions]
    unused = [result for result in tooled if not result.code_executions]
    executions = sum(result.code_executions or 0 for result in tooled)
    errors = sum(result.code_errors or 0 for result in tooled)
    return {"answers": len(tooled), "used_code": len(used) / len(tooled),
            "executions_per_answer": executions / len(tooled),
            "error_rate": errors / executions if executions else 0.0, "accuracy_with_code": _accuracy(used),
            "accuracy_without_code": _accuracy(unused)}


def reasoning_metrics(done: list[Item]) -> dict[str, Any] | None:
    """For answers with a reasoning trace: the share whose trace the model ended itself, tokens in
    the trace and in the answer (median, p90), accuracy with those traces only, the no-answer rate
    of traces cut off (of every answer), and with budget forcing the share forced and accuracy with
    forced answers and without (None: no traces)."""
    traced = [item.result for item in done if item.result is not None and item.result.reasoning_complete is not None]
    if not traced:
        return None
    complete = [result for result in traced if result.reasoning_complete]
    cut_off = [result for result in traced if not result.reasoning_complete and not result.thinking_forced]
    forced = [result for result in traced if result.thinking_forced]
    return {"answers": len(traced), "complete": len(complete) / len(traced),
            "reasoning_tokens": _spread([r.reasoning_tokens for r in traced if r.reasoning_tokens is not None]),
            "answer_tokens": _spread([r.tokens - (r.reasoning_tokens or 0) for r in traced if r.tokens is not None]),
            "accuracy_complete": _accuracy(complete),
            "no_answer_cut_off": sum(result.predicted is None for result in cut_off) / len(done),
            "forced": len(forced) / len(traced), "accuracy_forced": _accuracy(forced),
            "accuracy_not_forced": _accuracy([result for result in traced if not result.thinking_forced])}


def _accuracy(results: list[Result]) -> float | None:
    return sum(bool(result.correct) for result in results) / len(results) if results else None


def _spread(values: list[int]) -> dict[str, float] | None:
    """Median and 90th percentile (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[math.ceil(0.9 * len(ordered)) - 1]}


def _throughput(done: list[Item], key: str) -> dict[str, dict[str, float]]:
    """Items, generated tokens and tokens/s per worker (or worker/device), from generated items
    (tasks/throughput.py: a worker's rate is its devices' added up)."""
    devices: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"items": 0, "tokens": 0, "seconds": 0.0})
    for item in done:
        result = item.result
        if result is None or result.seconds is None:
            continue  # brought-your-own responses carry no timing
        sums = devices[(result.worker or "?", result.device or "?")]
        sums["items"] += 1
        sums["tokens"] += result.tokens or 0
        sums["seconds"] += result.seconds
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (worker, device), sums in sorted(devices.items()):
        rows[worker if key == "worker" else f"{worker}/{device}"].append(sums)
    return {name: {"items": sum(d["items"] for d in group), "tokens": sum(d["tokens"] for d in group),
                   "tokens_per_second": round(combined_rate(group), 1)} for name, group in rows.items()}
