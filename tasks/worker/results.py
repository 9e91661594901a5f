"""Finished answers turned into stored results: how each was made, graded off the device (the
batch's symbolic comparisons in parallel), written through their claims' tokens in one round
trip, errors failed back."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.config import SamplingConfig, WorkerConfig
from tasks.engines import Finished, Generation, Request, UnanswerableItem, answer_all
from tasks.grading import grade_many
from tasks.grading.equivalence import is_correct
from tasks.grading.extract import extract_answer
from tasks.prompts import render
from tasks.reasoning import reasoning_tokens, split_reasoning
from tasks.store import Store
from tasks.store.models import Checkpoint, Claim, Item, Result
from tasks.throughput import BatchReport
from tasks.worker.chat import prompt_provenance

if TYPE_CHECKING:
    from tasks.worker.shards import ShardWriter

log = logging.getLogger("fleetgen")
EXTRACT_SAMPLING = SamplingConfig(max_new_tokens=16, thinking="off")


@dataclass
class Outcome:
    """One finished request: its item, the claim holding it, and the answer or the error."""

    item: Item
    claim: Claim
    answer: Generation | Exception


def to_result(outcome: Outcome, answer: Generation, engine: str, device: str, config: WorkerConfig) -> Result:
    partial = outcome.item.partial  # a checkpoint this answer continued
    before = Checkpoint.from_dict(partial) if partial else Checkpoint("", 0)
    whole = before.then(answer.text, answer.tokens) if partial else Checkpoint(answer.text, answer.tokens)
    text, tokens = whole.text, whole.tokens
    split = split_reasoning(text, marker=config.sampling.thinking_marker, thinking=config.sampling.thinking)
    if split.complete is False:  # all of it is the trace
        trace_tokens: int | None = tokens
    elif answer.reasoning_tokens is not None and config.sampling.thinking_marker not in before.text:  # counted
        trace_tokens = before.tokens + answer.reasoning_tokens
    else:
        trace_tokens = reasoning_tokens(split, text=text, tokens=tokens)
    return Result(response=split.answer, reasoning=split.reasoning,
                  reasoning_complete=split.complete and not answer.thinking_forced,  # ended by the model itself
                  reasoning_tokens=trace_tokens, thinking_forced=answer.thinking_forced, tokens=tokens,
                  continued_at=list(whole.continued_at) or None,
                  finish_reason=answer.finish_reason,
                  seconds=answer.seconds, worker=outcome.claim.worker, device=device, finished=time.time(),
                  engine=engine, model=config.model.model_dump(), sampling=config.sampling.model_dump(),
                  predicted=answer.extracted, extracted_by="llm" if answer.extracted else None,
                  code_executions=answer.code_executions, code_errors=answer.code_errors,
                  code_seconds=answer.code_seconds, seed=answer.seed, **prompt_provenance(outcome.item, config.prompt))


def store_outcomes(store: Store, outcomes: list[Outcome], *, engine: str, device: str, config: WorkerConfig,
                   shards: ShardWriter | None = None) -> BatchReport:
    """Grade the answers and write them through their claims' tokens (one round trip), or with
    --texts stage them for the worker's next shard (`shards.py` completes them once it is
    written); give the errored items back (attempts + 1), failed with their error after the
    last attempt."""
    answered = [(o, to_result(o, o.answer, engine, device, config)) for o in outcomes
                if isinstance(o.answer, Generation)]
    grade_results([(outcome.item, result) for outcome, result in answered])
    parts: dict[str, tuple[Claim, dict[str, Result]]] = {}
    for outcome, result in answered:
        parts.setdefault(outcome.claim.token, (outcome.claim, {}))[1][outcome.item.id] = result
    errors: dict[tuple[str, str, int], tuple[Claim, list[str]]] = {}  # (token, message, attempts allowed)
    for outcome in outcomes:
        if isinstance(outcome.answer, Exception):
            message = f"{type(outcome.answer).__name__}: {outcome.answer}"[:500]
            attempts = 1 if isinstance(outcome.answer, UnanswerableItem) else config.max_attempts  # no retry helps
            errors.setdefault((outcome.claim.token, message, attempts), (outcome.claim, []))[1].append(outcome.item.id)
    report = BatchReport(device=device, items=len(outcomes),
                         tokens=sum(result.tokens or 0 for _, result in answered),
                         seconds=sum(result.seconds or 0.0 for _, result in answered))
    if shards is not None:
        report.done = shards.stage(list(parts.values()))
    else:
        report.done = store.complete_many(list(parts.values())) if parts else 0
    if report.done < len(answered):  # the only sure sign of a takeover (a heartbeat races with writes)
        log.warning(f"{device}: {len(answered) - report.done} answers were not written: their items are no longer this "
                    "worker's (given back at shutdown, or their lease expired and another worker took them: raise "
                    "--lease-seconds if this worker was alive all along)")
    report.failed = sum(store.fail(claim, ids, message, attempts)
                        for (_, message, attempts), (claim, ids) in errors.items())
    return report


def grade_results(answered: list[tuple[Item, Result]]) -> None:
    """Set `predicted` (unless an extraction pass found it) and `correct` on every result."""
    by_llm = [(item, result) for item, result in answered if result.extracted_by == "llm"]
    for item, result in by_llm:
        result.correct = is_correct(result.predicted, item.reference)
    rest = [(item, result) for item, result in answered if result.extracted_by != "llm"]
    for (item, result), graded in zip(rest, grade_many([(result.response, item.reference) for item, result in rest])):
        result.predicted, result.correct = graded.predicted, graded.correct


def extract_with_llm(engine: Any, group: list[Finished], sampling: SamplingConfig) -> None:
    """The original's second pass, on the device, for answers whose final answer cannot be read:
    ask the model for the bare final answer (prompts/extract.txt) of what follows the reasoning
    trace (none for a trace cut off); the response stays as it was."""
    texts = [(answer, split_reasoning(answer.text, marker=sampling.thinking_marker, thinking=sampling.thinking).answer)
             for _, answer in group if isinstance(answer, Generation)]
    unparsed = [(answer, text) for answer, text in texts if text and extract_answer(text) is None]
    requests = [Request(key=str(index), prompt=render("extract", response=text))
                for index, (_, text) in enumerate(unparsed)]
    for (answer, _), extracted in zip(unparsed, answer_all(engine, requests, EXTRACT_SAMPLING) if requests else []):
        found = extract_answer(extracted.text) if isinstance(extracted, Generation) else None
        answer.extracted = found
