"""The device loop's orchestration with fakes: overlap of claims and writes with generation,
waiting while other workers hold leases, and failures that surface."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.store import Claim, Item
from tasks.worker import Answered, BatchReport, LeaseKeeper, device_loop


class FakeKeeper(LeaseKeeper):
    def __init__(self) -> None:
        self.held: set[str] = set()

    def hold(self, claim: Claim) -> None:
        self.held.add(claim.token)

    def drop(self, claim: Claim) -> None:
        self.held.discard(claim.token)


def claims(batches: int, size: int = 2) -> list[Claim]:
    return [Claim(f"t{b}", "w", [Item(f"q{b}-{i}", "q", "1", id=f"{b}-{i}") for i in range(size)]) for b in range(batches)]


def answered(claim: Claim) -> Answered:
    return Answered(claim, {i: {} for i in claim.ids}, {}, BatchReport("cpu", len(claim.items), 0, 0, 1, 0.1))


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

    reports = device_loop(claim_next, answer, save, finished=lambda: True, keeper=keeper, poll_seconds=0.01)
    assert [r.done for r in reports] == [2, 2, 2] and keeper.held == set()
    assert ("claim", True) in events and ("save", True) in events  # I/O happened while the device generated


def test_waits_while_others_hold_leases_then_takes_over() -> None:
    later, checks = claims(1), []

    def claim_next() -> Claim:
        return later.pop(0) if len(checks) >= 2 and later else Claim("empty", "w")

    def finished() -> bool:
        checks.append(time.monotonic())
        return not later

    reports = device_loop(claim_next, answered, lambda a: a.report, finished, FakeKeeper(), poll_seconds=0.01)
    assert len(reports) == 1 and len(checks) == 3


def test_a_failed_write_stops_the_loop_with_its_error() -> None:
    queue = claims(2)

    def save(done: Answered) -> BatchReport:
        raise ConnectionError("store unreachable")

    with pytest.raises(ConnectionError, match="store unreachable"):
        device_loop(lambda: queue.pop(0) if queue else Claim("empty", "w"), answered, save, lambda: True,
                    FakeKeeper(), poll_seconds=0.01)


def test_llm_extraction_grades_unparsable_responses_and_keeps_them_verbatim(tiny_model, monkeypatch) -> None:
    from tasks.generation import Generation, LoadedModel, ModelSpec
    from tasks.worker import WorkerSettings, answer_claim, grade

    model = LoadedModel(ModelSpec(str(tiny_model)), "cpu")

    def scripted(prompts, sampling):  # answers without numbers; the extraction pass says 18
        return [Generation("Answer: 18" if "Solution:" in model.prompt_text(p) else "no digits here", 3) for p in prompts]

    monkeypatch.setattr(model, "generate", scripted)
    claim = Claim("t", "w", [Item("q1", "Eggs?", "18", id="1")])
    with_llm = answer_claim(claim, model, WorkerSettings(run="r", worker="w", extract="llm"))
    regex_only = answer_claim(claim, model, WorkerSettings(run="r", worker="w"))
    assert "correct" not in with_llm.results["1"]  # grading happens off the device, at save time
    grade(with_llm)
    grade(regex_only)
    result = with_llm.results["1"]
    assert (result["response"], result["predicted"], result["correct"], result["extracted_by"]) == (
        "no digits here", "18", True, "llm")
    assert (regex_only.results["1"]["predicted"], regex_only.results["1"]["correct"]) == (None, False)
