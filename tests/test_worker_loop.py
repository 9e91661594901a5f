"""The device loop's orchestration with fakes: overlap of claims and writes with generation,
waiting while other workers hold leases, and failures that surface."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.config import ModelConfig, WorkerConfig
from tasks.engines import Generation
from tasks.engines.hf_static import HFStaticEngine
from tasks.store.models import Claim, Item, Result
from tasks.worker.batch import Answered, BatchReport, answer_claim, grade_batch, summarize_reports
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import device_loop


class FakeKeeper(LeaseKeeper):
    def __init__(self) -> None:
        self.held: set[str] = set()

    def hold(self, claim: Claim) -> None:
        self.held.add(claim.token)

    def drop(self, claim: Claim) -> None:
        self.held.discard(claim.token)


def claims(batches: int, size: int = 2) -> list[Claim]:
    return [Claim(f"t{b}", "w", [Item(question_id=f"q{b}-{i}", question="q", reference="1", id=f"{b}-{i}")
                                 for i in range(size)]) for b in range(batches)]


def answered(claim: Claim) -> Answered:
    return Answered(claim, {i: Result(response="1") for i in claim.ids}, {},
                    BatchReport(device="cpu", items=len(claim.items), tokens=1, seconds=0.1))


def test_next_claim_and_last_write_overlap_generation() -> None:
    queue, events, keeper = claims(3), [], FakeKeeper()
    generating = threading.Event()

    def claim_next() -> Claim:
        events.append(("claim", generating.is_set()))
        return queue.pop(0) if queue else Claim("empty", "w")

    def answer(claim: Claim) -> Answered:
        generating.set()
        time.sleep(0.1)  # the background thread claims meanwhile
        generating.clear()
        return answered(claim)

    def save(done: Answered) -> BatchReport:
        events.append(("save", generating.is_set()))
        done.report.done = len(done.results)
        return done.report

    reports = device_loop(claim_next=claim_next, answer=answer, save=save, finished=lambda: True, keeper=keeper,
                          poll_seconds=0.01)
    assert [r.done for r in reports] == [2, 2, 2] and keeper.held == set()
    assert ("claim", True) in events and ("save", True) in events  # I/O happened while the device generated


def test_waits_while_others_hold_leases_then_takes_over() -> None:
    later, checks = claims(1), []

    def claim_next() -> Claim:
        return later.pop(0) if len(checks) >= 2 and later else Claim("empty", "w")

    def finished() -> bool:
        checks.append(time.monotonic())
        return not later

    reports = device_loop(claim_next=claim_next, answer=answered, save=lambda a: a.report, finished=finished,
                          keeper=FakeKeeper(), poll_seconds=0.01)
    assert len(reports) == 1 and len(checks) == 3


def test_a_failed_write_stops_the_loop_with_its_error() -> None:
    queue = claims(2)

    def save(done: Answered) -> BatchReport:
        raise ConnectionError("store unreachable")

    with pytest.raises(ConnectionError, match="store unreachable"):
        device_loop(claim_next=lambda: queue.pop(0) if queue else Claim("empty", "w"), answer=answered, save=save,
                    finished=lambda: True, keeper=FakeKeeper(), poll_seconds=0.01)


def test_llm_extraction_grades_unparsable_responses_and_keeps_them_verbatim(tiny_model, monkeypatch) -> None:
    model = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")

    def scripted(prompts, sampling):  # answers without an answer in them; the extraction pass says 18
        return [Generation("Answer: 18" if "Solution:" in model.prompt_text(p) else "I am not sure how to solve it.", 3,
                           "stop") for p in prompts]

    monkeypatch.setattr(model, "generate", scripted)
    claim = Claim("t", "w", [Item(question_id="q1", question="Eggs?", reference="18", id="1")])
    with_llm = answer_claim(claim, model, WorkerConfig(worker="w", extract="llm"))
    regex_only = answer_claim(claim, model, WorkerConfig(worker="w"))
    assert with_llm.results["1"].correct is False  # grading happens off the device, at save time
    grade_batch(with_llm)
    grade_batch(regex_only)
    result = with_llm.results["1"]
    assert (result.response, result.predicted, result.correct, result.extracted_by) == (
        "I am not sure how to solve it.", "18", True, "llm")
    assert (regex_only.results["1"].predicted, regex_only.results["1"].correct) == (None, False)


def test_every_answer_records_how_it_was_made(tiny_model) -> None:
    from tasks.prompts import prompt_hash

    model = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu", label="cpu#1")
    config = WorkerConfig(worker="w", sampling={"max_new_tokens": 3, "temperature": 0.7, "seed": 5})
    first = Item(question_id="q1", question="Eggs?", reference="18", id="1")
    retry = Item(question_id="q1", question="Eggs?", reference="18", stage=1, previous="17", id="2")
    results = answer_claim(Claim("t", "w", [first, retry]), model, config).results
    made = results["1"]
    assert (made.engine, made.model, made.sampling) == ("hf-static", config.model.model_dump(),
                                                        config.sampling.model_dump())
    assert (made.worker, made.device, made.prompt, made.prompt_hash) == ("w", "cpu#1", "step_by_step",
                                                                         prompt_hash("step_by_step"))
    assert (results["2"].prompt, results["2"].prompt_hash) == ("step_by_step+retry",
                                                               prompt_hash("step_by_step", "retry"))
    assert made.finish_reason in ("stop", "length") and 1 <= made.tokens <= 3 and made.seconds >= 0


def test_throughput_adds_up_over_devices_running_in_parallel() -> None:
    reports = [BatchReport(device=device, items=16, tokens=5000, seconds=10.0, done=16)
               for device in ("cuda:1", "cuda:0", "cuda:0")]
    totals = summarize_reports(reports)
    assert list(totals) == ["cuda:0", "cuda:1", "all"]
    assert totals["cuda:0"]["tokens_per_second"] == 500.0 and totals["cuda:1"]["tokens_per_second"] == 500.0
    assert totals["all"]["tokens_per_second"] == 1000.0  # two T4s at 500 tokens/s each, not 500
    assert (totals["all"]["done"], totals["all"]["batches"]) == (48, 3)
