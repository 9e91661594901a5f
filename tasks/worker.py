"""The worker's business logic, free of Prefect: claim -> generate -> grade -> complete, per device."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from tasks.answers import extract_answer, grade_response, is_correct
from tasks.generation import Generation, LoadedModel, Sampling, generate_splitting
from tasks.prompts import render
from tasks.store import Claim, Item, Store, summarize

log = logging.getLogger("fleetgen")
EXTRACT_SAMPLING = Sampling(max_new_tokens=16)


@dataclass(frozen=True)
class WorkerSettings:
    run: str
    worker: str
    batch_size: int = 16
    lease_seconds: float = 600.0
    prompt: str = "step_by_step"
    sampling: Sampling = Sampling()
    extract: str = "regex"  # or "llm": a second pass with prompts/extract.txt where no answer is found
    max_attempts: int = 3

    @property
    def poll_seconds(self) -> float:
        """How often an idle device looks for work while other workers hold leases."""
        return max(0.2, min(self.lease_seconds / 4, 15.0))


@dataclass
class BatchReport:
    device: str
    items: int
    done: int
    failed: int
    tokens: int
    seconds: float


def item_messages(item: Item, template: str) -> list[dict[str, str]]:
    """The chat an item is answered in: the question; for a refine round, also the previous
    response and the retry prompt (a multi-turn chat, or one text where there is no template)."""
    messages = [{"role": "user", "content": render(template, question=item.question)}]
    if item.stage > 0 and item.previous:
        messages += [{"role": "assistant", "content": item.previous}, {"role": "user", "content": render("retry")}]
    return messages


class LeaseKeeper:
    """Heartbeats every held claim from a background thread; gives them back on exit."""

    def __init__(self, store: Store, lease_seconds: float):
        self.store, self.lease_seconds = store, lease_seconds
        self._claims: dict[str, Claim] = {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        for claim in list(self._claims.values()):
            released = self.store.release(claim)
            if released:
                log.info(f"gave back {released} unfinished items")

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.token] = claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._claims.pop(claim.token, None)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                claims = list(self._claims.values())
            for claim in claims:
                try:
                    kept = self.store.heartbeat(claim, self.lease_seconds)
                except Exception as error:  # a flaky network: the next beat tries again
                    log.warning(f"heartbeat failed ({error}); retrying in {self.lease_seconds / 3:.0f} s")
                    continue
                if kept < len(claim.items):
                    log.warning(f"{len(claim.items) - kept} items of a batch were taken over after their lease expired")


@dataclass
class Answered:
    """A batch answered on its device, waiting to be written back."""

    claim: Claim
    results: dict[str, dict[str, Any]]
    errors: dict[str, list[str]]  # error message -> item ids
    report: BatchReport


def answer_claim(claim: Claim, model: LoadedModel, settings: WorkerSettings) -> Answered:
    """Generate answers for a claimed batch, sorted by prompt length (in characters: no extra
    tokenization on the device thread); items whose generation still fails alone are kept with
    their error. Grading waits for `save_answers`, off the device."""
    prompts = {item.id: item_messages(item, settings.prompt) for item in claim.items}
    items = sorted(claim.items, key=lambda item: sum(len(message["content"]) for message in prompts[item.id]))
    started = time.perf_counter()
    outputs = generate_splitting(model, [prompts[item.id] for item in items], settings.sampling)
    results, errors = {}, {}
    for item, output in zip(items, outputs):
        if isinstance(output, Exception):
            errors.setdefault(f"{type(output).__name__}: {output}"[:500], []).append(item.id)
        else:
            results[item.id] = {"response": output.text, "tokens": output.tokens, "worker": claim.worker,
                                "device": model.label, "model": model.spec.describe()}
    if settings.extract == "llm":
        _extract_with_llm(model, results)
    seconds = time.perf_counter() - started
    tokens = sum(result["tokens"] for result in results.values())
    for result in results.values():  # each item's share of the batch's time, so seconds add up
        result["seconds"] = round(seconds * result["tokens"] / max(tokens, 1), 4)
    return Answered(claim, results, errors, BatchReport(model.label, len(items), 0, 0, tokens, seconds))


def _extract_with_llm(model: LoadedModel, results: dict[str, dict[str, Any]]) -> None:
    """The original's second pass, for responses with no parsable answer: ask the model for the
    bare final answer (prompts/extract.txt); the response itself stays as it was."""
    unparsed = [id_ for id_, result in results.items() if extract_answer(result["response"]) is None]
    prompts = [render("extract", response=results[id_]["response"]) for id_ in unparsed]
    for id_, answer in zip(unparsed, generate_splitting(model, prompts, EXTRACT_SAMPLING) if prompts else []):
        found = extract_answer(answer.text) if isinstance(answer, Generation) else None
        if found is not None:
            results[id_].update(predicted=found, extracted_by="llm")


def grade(answered: Answered) -> None:
    """Add `predicted` (unless the LLM pass found it) and `correct` to every result."""
    references = {item.id: item.reference for item in answered.claim.items}
    for id_, result in answered.results.items():
        if "predicted" in result:
            result["correct"] = is_correct(result["predicted"], references[id_])
        else:
            result.update(grade_response(result["response"], references[id_]))


def save_answers(store: Store, answered: Answered, max_attempts: int) -> BatchReport:
    """Grade the results and write them through the claim's token; fail the errored items back."""
    grade(answered)
    claim, report = answered.claim, answered.report
    report.done = store.complete(claim, answered.results)
    report.failed = sum(store.fail(claim, ids, error, max_attempts) for error, ids in answered.errors.items())
    return report


def run_finished(store: Store, run: str) -> bool:
    """Nothing pending and nothing running (failed items stay failed)."""
    summary = summarize(store.counts(run))
    return summary["pending"] == 0 and summary["running"] == 0


def device_loop(claim_next: Callable[[], Claim], answer: Callable[[Claim], Answered],
                save: Callable[[Answered], BatchReport], finished: Callable[[], bool], keeper: LeaseKeeper,
                poll_seconds: float) -> list[BatchReport]:
    """Loop until the run is finished. The device thread only generates: claiming the next batch
    and writing the last one's results happen meanwhile in a background thread, in order."""
    reports: list[BatchReport] = []
    saving: list[Future[BatchReport]] = []

    def claim_and_hold() -> Claim:
        claim = claim_next()
        if claim.items:
            keeper.hold(claim)
        return claim

    def save_and_drop(answered: Answered) -> BatchReport:
        try:
            return save(answered)
        finally:
            keeper.drop(answered.claim)

    def collect(wait: bool) -> None:
        while saving and (wait or saving[0].done()):
            reports.append(saving.pop(0).result())  # a failed write raises here

    with ThreadPoolExecutor(1, thread_name_prefix="store-io") as io:
        def background(function: Callable[..., Any], *args: Any) -> Future[Any]:
            return io.submit(contextvars.copy_context().run, function, *args)  # keeps Prefect's context

        upcoming = background(claim_and_hold)
        while True:
            claim = upcoming.result()
            if not claim.items:
                collect(wait=True)
                if finished():
                    return reports
                time.sleep(poll_seconds)
                upcoming = background(claim_and_hold)
                continue
            upcoming = background(claim_and_hold)
            saving.append(background(save_and_drop, answer(claim)))
            collect(wait=False)
