"""Answering one claimed batch on an engine, grading it off the device, writing it back, and the
throughput figures that add up across devices."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tasks.config import SamplingConfig, WorkerConfig
from tasks.engines import Engine, Generation, generate_splitting
from tasks.grading import grade_many
from tasks.grading.equivalence import is_correct
from tasks.grading.extract import extract_answer
from tasks.prompts import render
from tasks.store import Store
from tasks.store.models import Claim, Result
from tasks.worker.chat import item_messages, prompt_provenance

EXTRACT_SAMPLING = SamplingConfig(max_new_tokens=16)


@dataclass(kw_only=True)
class BatchReport:
    device: str
    items: int
    tokens: int
    seconds: float
    done: int = 0
    failed: int = 0


@dataclass
class Answered:
    """A batch answered on its device, waiting to be graded and written back."""

    claim: Claim
    results: dict[str, Result]
    errors: dict[str, list[str]]  # error message -> item ids
    report: BatchReport


def answer_claim(claim: Claim, engine: Engine, config: WorkerConfig) -> Answered:
    """Generate answers for a claimed batch, sorted by prompt length (in characters: no extra
    tokenization on the device thread); items whose generation still fails alone are kept with
    their error. Grading waits for `save_answers`, off the device."""
    prompts = {item.id: item_messages(item, config.prompt) for item in claim.items}
    items = sorted(claim.items, key=lambda item: sum(len(message["content"]) for message in prompts[item.id]))
    made_with = {"engine": engine.name, "model": config.model.model_dump(), "sampling": config.sampling.model_dump()}
    started = time.perf_counter()
    outputs = generate_splitting(engine, [prompts[item.id] for item in items], config.sampling)
    results, errors = {}, {}
    for item, output in zip(items, outputs):
        if isinstance(output, Exception):
            errors.setdefault(f"{type(output).__name__}: {output}"[:500], []).append(item.id)
        else:
            results[item.id] = Result(response=output.text, tokens=output.tokens, finish_reason=output.finish_reason,
                                      worker=claim.worker, device=engine.label, **made_with,
                                      **prompt_provenance(item, config.prompt))
    if config.extract == "llm":
        _extract_with_llm(engine, results)
    seconds = time.perf_counter() - started
    tokens = sum(result.tokens or 0 for result in results.values())
    for result in results.values():  # each item's share of the batch's time, so seconds add up
        result.seconds = round(seconds * (result.tokens or 0) / max(tokens, 1), 4)
    return Answered(claim, results, errors, BatchReport(device=engine.label, items=len(items), tokens=tokens,
                                                        seconds=seconds))


def _extract_with_llm(engine: Engine, results: dict[str, Result]) -> None:
    """The original's second pass, for responses with no parsable answer: ask the model for the
    bare final answer (prompts/extract.txt); the response itself stays as it was."""
    unparsed = [id_ for id_, result in results.items() if extract_answer(result.response) is None]
    prompts = [render("extract", response=results[id_].response) for id_ in unparsed]
    for id_, answer in zip(unparsed, generate_splitting(engine, prompts, EXTRACT_SAMPLING) if prompts else []):
        found = extract_answer(answer.text) if isinstance(answer, Generation) else None
        if found is not None:
            results[id_].predicted, results[id_].extracted_by = found, "llm"


def grade_batch(answered: Answered) -> None:
    """Set `predicted` (unless the LLM pass found it) and `correct` on every result, the batch's
    symbolic comparisons in parallel."""
    references = {item.id: item.reference for item in answered.claim.items}
    by_llm = {id_: result for id_, result in answered.results.items() if result.extracted_by == "llm"}
    for id_, result in by_llm.items():
        result.correct = is_correct(result.predicted, references[id_])
    rest = [(id_, result) for id_, result in answered.results.items() if id_ not in by_llm]
    for (id_, result), graded in zip(rest, grade_many([(result.response, references[id_]) for id_, result in rest])):
        result.predicted, result.correct = graded.predicted, graded.correct


def save_answers(store: Store, answered: Answered, max_attempts: int) -> BatchReport:
    """Grade the results and write them through the claim's token; fail the errored items back."""
    grade_batch(answered)
    claim, report = answered.claim, answered.report
    report.done = store.complete(claim, answered.results)
    report.failed = sum(store.fail(claim, ids, error, max_attempts) for error, ids in answered.errors.items())
    return report


def summarize_reports(reports: list[BatchReport]) -> dict[str, dict[str, Any]]:
    """Batches, items, tokens, seconds and tokens/s per device, then `all`: devices run in
    parallel, so the worker's rate is the sum of its devices' rates."""
    devices: dict[str, dict[str, Any]] = {}
    for report in reports:
        total = devices.setdefault(report.device, {"batches": 0, "items": 0, "done": 0, "failed": 0, "tokens": 0,
                                                   "seconds": 0.0})
        total["batches"] += 1
        for field in ("items", "done", "failed", "tokens", "seconds"):
            total[field] += getattr(report, field)
    for total in devices.values():
        total["tokens_per_second"] = round(total["tokens"] / total["seconds"], 1) if total["seconds"] else 0.0
        total["seconds"] = round(total["seconds"], 2)
    overall = {field: sum(total[field] for total in devices.values())
               for field in ("batches", "items", "done", "failed", "tokens")}
    overall["tokens_per_second"] = round(sum(total["tokens_per_second"] for total in devices.values()), 1)
    return {**dict(sorted(devices.items())), "all": overall}
