"""The device loop's orchestration with fakes: a batch claimed ahead while the last one is
answered, a claim never held up by a slow write (two lanes), answers written after a while
even when a batch's worth is slow to come, waiting while others hold leases, failures that
surface; and what each stored answer records."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import pytest

from tasks.config import ModelConfig, SamplingConfig, WorkerConfig
from tasks.engines import Generation, Request
from tasks.engines.hf_static import HFStaticEngine
from tasks.store.models import Claim, Item
from tasks.store.sqlite import SqliteStore
from tasks.throughput import BatchReport, summarize_reports
from tasks.worker.exchange import Exchange
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import device_loop, work_on_run
from tasks.worker.results import Outcome, extract_with_llm, store_outcomes
from tests.support import ScriptedEngine

SAMPLING = SamplingConfig(max_new_tokens=4)


class FakeKeeper(LeaseKeeper):
    def __init__(self) -> None:
        super().__init__(store=None, lease_seconds=60)  # its heartbeat thread is never started
        self.held: set[str] = set()

    def hold(self, claim: Claim) -> None:
        self.held.add(claim.token)

    def drop(self, claim: Claim) -> None:
        self.held.discard(claim.token)


def claims(batches: int, size: int = 2) -> list[Claim]:
    return [Claim(f"t{b}", "w", [Item(question_id=f"q{b}-{i}", question=f"q{b}-{i}", reference="1", id=f"{b}-{i}")
                                 for i in range(size)]) for b in range(batches)]


class FakeStore:
    """Store calls as the exchange makes them: what each wrote and claimed, whether the engine
    was generating at that moment, and when each began and ended (a write taking
    `write_seconds`)."""

    def __init__(self, batches: list[Claim], generating: threading.Event, write_seconds: float = 0.0):
        self.queue, self.generating, self.calls = list(batches), generating, []
        self.write_seconds, self.spans = write_seconds, []

    def call(self, outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        started = time.monotonic()
        self.calls.append((len(outcomes), want, self.generating.is_set()))
        report = BatchReport(device="cpu", items=len(outcomes), tokens=len(outcomes), seconds=0.1,
                             done=len(outcomes)) if outcomes else None
        claim = (self.queue.pop(0) if self.queue else Claim("empty", "w")) if want else None
        if outcomes:
            time.sleep(self.write_seconds)
        self.spans.append(("write" if outcomes else "claim", started, time.monotonic()))
        return report, claim


class SlowEngine(ScriptedEngine):
    """Answers a batch in `seconds`, flagging `generating` meanwhile."""

    def __init__(self, generating: threading.Event, seconds: float = 0.1, batch_size: int = 2):
        super().__init__({"": "1"}, batch_size=batch_size)
        self.generating, self.seconds = generating, seconds

    def reply(self, text: str) -> str:
        return "1"

    def run(self, feeder, sampling):
        for group in super().run(feeder, sampling):
            self.generating.set()
            time.sleep(self.seconds)
            self.generating.clear()
            yield group


def exchange(store: FakeStore, keeper: LeaseKeeper, finished=lambda: True, flush_seconds: float = 10.0) -> Exchange:
    return Exchange(call=store.call, finished=finished, keeper=keeper,
                    request=lambda item: Request(key=item.id, prompt=item.question), claim_size=2,
                    flush_seconds=flush_seconds, poll_seconds=0.01)


def test_the_next_batch_is_claimed_and_the_last_written_while_the_engine_generates() -> None:
    generating, keeper = threading.Event(), FakeKeeper()
    store = FakeStore(claims(4), generating)
    reports = device_loop(engine=SlowEngine(generating), exchange=exchange(store, keeper), sampling=SAMPLING)
    assert [r.done for r in reports] == [2, 2, 2, 2] and keeper.held == set()
    assert any(wrote == 0 and want and busy for wrote, want, busy in store.calls)  # a claim made ahead
    assert any(wrote and busy for wrote, want, busy in store.calls)  # the last batch written meanwhile
    assert len(store.calls) <= 2 * 4 + 3  # about a claim and a write a batch, never a call per item


def test_a_slow_write_does_not_hold_up_the_next_claim() -> None:
    """A write that takes its time (grading that yields the CPU, a store that retries) leaves
    the claim lane free: the next batch is claimed and answered meanwhile."""
    generating, keeper = threading.Event(), FakeKeeper()
    store = FakeStore(claims(6), generating, write_seconds=0.5)
    lanes = exchange(store, keeper, flush_seconds=0)
    reports = device_loop(engine=SlowEngine(generating, seconds=0.05), exchange=lanes, sampling=SAMPLING)
    assert sum(r.done for r in reports) == 12 and keeper.held == set()
    writes = [(start, end) for kind, start, end in store.spans if kind == "write"]
    claimed = [(start, end) for kind, start, end in store.spans if kind == "claim"]
    assert any(w_start < c_start and c_end < w_end for w_start, w_end in writes for c_start, c_end in claimed)


def test_answers_are_written_after_flush_seconds_even_when_a_batch_is_slow_to_gather() -> None:
    generating, keeper = threading.Event(), FakeKeeper()
    store = FakeStore(claims(1, size=4), generating)

    class Trickle(ScriptedEngine):  # answers one request, then keeps working on the others
        def run(self, feeder, sampling):
            requests = feeder.take(4, wait=True)
            yield [(requests[0], Generation("1", 1, "stop"))]
            time.sleep(0.3)
            yield []
            yield [(request, Generation("1", 1, "stop")) for request in requests[1:]]
            assert feeder.take(4, wait=True) is None

    reports = device_loop(engine=Trickle({}), exchange=exchange(store, keeper, flush_seconds=0.2), sampling=SAMPLING)
    assert [r.done for r in reports] == [1, 3]  # the first answer did not wait for the other three


def test_waits_while_others_hold_leases_then_takes_over() -> None:
    generating, checks = threading.Event(), []
    store = FakeStore([], generating)
    later = claims(1)

    def finished() -> bool:
        checks.append(time.monotonic())
        if len(checks) == 2:
            store.queue += later  # another worker's lease ran out: its items can be claimed
        return len(checks) > 3

    reports = device_loop(engine=SlowEngine(generating, seconds=0), exchange=exchange(store, FakeKeeper(), finished),
                          sampling=SAMPLING)
    assert sum(r.done for r in reports) == 2 and len(checks) >= 3


def test_a_failed_write_stops_the_loop_with_its_error() -> None:
    generating = threading.Event()
    store = FakeStore(claims(2), generating)
    original = store.call

    def failing(outcomes, want):
        if outcomes:
            raise ConnectionError("store unreachable")
        return original(outcomes, want)

    store.call = failing
    with pytest.raises(ConnectionError, match="store unreachable"):
        device_loop(engine=SlowEngine(generating, seconds=0), exchange=exchange(store, FakeKeeper()), sampling=SAMPLING)


def test_llm_extraction_reads_unparsable_responses_and_keeps_them_verbatim(tiny_model, tmp_path: Path) -> None:
    model = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")

    def scripted(prompts, sampling, **options):  # the extraction pass says 18
        return [Generation("Answer: 18", 3, "stop") for _ in prompts]

    model.generate = scripted
    group = [(Request(key="1", prompt="Eggs?"), Generation("I am not sure how to solve it.", 7, "stop")),
             (Request(key="2", prompt="Eggs?"), Generation("#### 17", 3, "stop")),
             (Request(key="3", prompt="Eggs?"), Generation("<think>so 18 it could be, or", 9, "length"))]
    extract_with_llm(model, group, SamplingConfig())
    assert [answer.extracted for _, answer in group] == ["18", None, None]  # a trace cut off has no answer to read
    store = SqliteStore(tmp_path / "w.db")
    store.seed("r", [Item(question_id=f"q{n}", question="Eggs?", reference="18") for n in range(3)])
    claim = store.claim("r", "w", 3, 60)
    outcomes = [Outcome(item=item, claim=claim, answer=answer) for item, (_, answer) in zip(claim.items, group)]
    store_outcomes(store, outcomes, engine="hf-static", device="cpu", config=WorkerConfig(worker="w", extract="llm"))
    first, second, third = (item.result for item in store.items("r"))
    assert (first.response, first.predicted, first.correct, first.extracted_by) == (
        "I am not sure how to solve it.", "18", True, "llm")
    assert (second.predicted, second.correct, second.extracted_by) == ("17", False, None)
    assert (third.response, third.reasoning, third.reasoning_complete, third.predicted, third.correct) == (
        "", "so 18 it could be, or", False, None, False)


def test_every_answer_records_how_it_was_made_and_errors_go_back(tmp_path: Path) -> None:
    from tasks.prompts import prompt_hash

    store = SqliteStore(tmp_path / "w.db")
    store.seed("r", [Item(question_id="q1", question="Eggs?", reference="18"),
                     Item(question_id="q1", question="Eggs?", reference="18", stage=1, previous="17"),
                     Item(question_id="q2", question="Ducks?", reference="3")])
    claim = store.claim("r", "w", 3, 60)
    config = WorkerConfig(worker="w", sampling={"max_new_tokens": 3, "temperature": 0.7, "seed": 5})
    answers = [Generation("#### 18", 3, "stop", seconds=0.2), Generation("#### 18", 3, "length", seconds=0.1),
               RuntimeError("CUDA out of memory")]
    report = store_outcomes(store, [Outcome(item=i, claim=claim, answer=a) for i, a in zip(claim.items, answers)],
                            engine="hf-static", device="cpu#1", config=config)
    assert (report.done, report.failed, report.tokens, report.seconds) == (2, 1, 6, pytest.approx(0.3))
    made, retry, failed = sorted(store.items("r"), key=lambda i: (i.question_id, i.stage))
    assert (made.result.engine, made.result.model, made.result.sampling) == (
        "hf-static", config.model.model_dump(), config.sampling.model_dump())
    assert (made.result.worker, made.result.device, made.result.prompt, made.result.prompt_hash) == (
        "w", "cpu#1", "step_by_step", prompt_hash("step_by_step"))
    assert (retry.result.prompt, retry.result.finish_reason) == ("step_by_step+retry", "length")
    assert (failed.status, failed.attempts, failed.error) == ("pending", 1, "RuntimeError: CUDA out of memory")


def test_throughput_adds_up_over_devices_running_in_parallel() -> None:
    reports = [BatchReport(device=device, items=16, tokens=5000, seconds=10.0, done=16)
               for device in ("cuda:1", "cuda:0", "cuda:0")]
    totals = summarize_reports(reports)
    assert list(totals) == ["cuda:0", "cuda:1", "all"]
    assert totals["cuda:0"]["tokens_per_second"] == 500.0 and totals["cuda:1"]["tokens_per_second"] == 500.0
    assert totals["all"]["tokens_per_second"] == 1000.0  # two T4s at 500 tokens/s each, not 500
    assert (totals["all"]["done"], totals["all"]["batches"]) == (48, 3)
    idle = summarize_reports(reports, ["cuda:0", "cuda:1", "cuda:2"])["cuda:2"]  # loaded, got no work
    assert (idle["batches"], idle["done"], idle["tokens_per_second"]) == (0, 0, 0.0)


def test_store_calls_retry_on_any_error_but_a_user_error(monkeypatch) -> None:
    import pytest

    from tasks.errors import UserError
    from tasks.worker import writes

    slept: list[float] = []  # this module's sleeps only (other threads of the test process may sleep too)
    monkeypatch.setattr(writes, "time", types.SimpleNamespace(sleep=slept.append, monotonic=time.monotonic))
    attempts = iter([ConnectionError("reset"), ConnectionError("reset"), "written"])

    def flaky() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert writes.with_retries(flaky) == "written" and slept == [2, 10]
    slept.clear()
    with pytest.raises(ConnectionError):
        writes.with_retries(lambda: (_ for _ in ()).throw(ConnectionError("down")))
    assert slept == writes.STORE_RETRY_DELAYS == [2, 10, 30]  # four attempts
    with pytest.raises(UserError):
        writes.with_retries(lambda: (_ for _ in ()).throw(UserError("disk full")))
    assert slept == [2, 10, 30]  # a user error is not retried


def test_engines_keeping_requests_in_flight_claim_at_least_as_many(tmp_path: Path) -> None:
    """A server kept 12 requests busy claims 12 at once, not --batch-size 4 three times (store operations)."""
    store = SqliteStore(tmp_path / "w.db")
    store.seed("r", [Item(question_id=f"q{n:02d}", question=f"question {n}", reference="1") for n in range(24)])
    sizes: list[int] = []
    claim = store.claim

    def recorded(run, worker, limit, *args, **kwargs):
        sizes.append(limit)
        return claim(run, worker, limit, *args, **kwargs)

    store.claim = recorded
    config = WorkerConfig(store="sqlite:///unused.db", run="r", worker="w", batch_size=4, lease_seconds=60,
                          engine={"name": "openai", "api_base": "http://127.0.0.1:1/v1", "concurrency": 12})
    assert config.claim_size == 12 and WorkerConfig(batch_size=4).claim_size == 4  # hf-static: its batch
    assert config.model_copy(update={"engine": config.engine.model_copy(update={"max_in_flight": 20})}).claim_size == 20
    with LeaseKeeper(store, 60) as keeper:
        work_on_run(store=store, engine=ScriptedEngine({"": "#### 1"}, batch_size=12), config=config, keeper=keeper)
    assert sizes and set(sizes) == {12} and {item.status for item in store.items("r")} == {"done"}


def test_an_item_given_back_and_claimed_again_before_its_write_comes_back_stays_the_new_claims() -> None:
    """A write gives an item back for another attempt and, before that write comes back, the claim
    lane claims the item again: the exchange keeps it as the new claim's, answers and writes it
    (an engine that asks for more while it answers, as the continuous ones do, takes the write in
    meanwhile)."""
    keeper, first = FakeKeeper(), claims(1)[0]
    again = Claim("t-again", "w", [first.items[0]])
    writing, taken_in, written_back, writes, handed = (threading.Event(), threading.Event(), threading.Event(),
                                                        [], [])

    def call(outcomes: list[Outcome], want: int) -> tuple[BatchReport | None, Claim | None]:
        if outcomes:  # the first write gives 0-0 back, and comes back once 0-0 is claimed again
            writes.append([(o.item.id, o.claim.token, isinstance(o.answer, Generation)) for o in outcomes])
            writing.set()
            assert len(writes) > 1 or taken_in.wait(10)
            written_back.set()
            failed = sum(not ok for _, _, ok in writes[-1])
            return BatchReport(device="cpu", items=len(outcomes), tokens=0, seconds=0.1, done=len(outcomes) - failed,
                               failed=failed), None
        handed.append(len(handed))
        if handed == [0]:
            return None, first
        if handed == [0, 1]:  # the claim made ahead while the first batch is answered: it sees 0-0 given back
            assert writing.wait(10)
            return None, again
        return None, Claim("e", "w")

    class AsksWhileAnswering:
        def run(self, feeder, sampling):
            while (requests := feeder.take(2, wait=True)) is not None:
                if writes:  # 0-0 again: the first write comes back while it is answered
                    taken_in.set()
                    assert written_back.wait(10)
                    time.sleep(0.05)
                    assert feeder.take(2, wait=False) == []
                yield [(request, RuntimeError("bad item") if request.key == "0-0" and not writes else
                        Generation("1", tokens=1, finish_reason="stop")) for request in requests]

    lanes = Exchange(call=call, finished=lambda: len(writes) == 2, keeper=keeper, claim_size=2,
                     request=lambda item: Request(key=item.id, prompt=item.question), flush_seconds=0,
                     poll_seconds=0.01)
    device_loop(engine=AsksWhileAnswering(), exchange=lanes, sampling=SAMPLING)
    assert writes == [[("0-0", "t0", False), ("0-1", "t0", True)], [("0-0", "t-again", True)]]
    assert keeper.held == set()
