"""Long answers that survive a worker's end: a streamed answer is kept with its item (a checkpoint)
every --checkpoint-seconds and when its claim is given back, and the next worker continues it
instead of starting over; the final text holds the checkpoint once, its tokens counted once.
Store semantics on both backends; the worker end to end as a process stopped with SIGTERM, then
killed with SIGKILL, against a scripted streaming server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

from flows.generate import generate
from flows.seed import seed
from tasks.config import SamplingConfig, SeedConfig, WorkerConfig
from tasks.engines import Engine, Feeder, Finished, Generation, ListFeeder, Request
from tasks.engines.budget import BudgetEngine, forced_close
from tasks.engines.code_loop import CodeLoopEngine
from tasks.engines.continuing import continued
from tasks.reasoning import FORCED_LEAD_IN
from tasks.store.models import Checkpoint, Item, Result
from tasks.store.sqlite import SqliteStore
from tests.conftest import ROOT, cli_env
from tests.support import ScriptedServer, wait_until

STEPS = 100  # words of the first worker's answer
HELD = 30  # its stream pauses after these until the test releases it: the worker is stopped mid-answer
REST = " so 18 eggs.</think>\n\n#### 18"


@pytest.mark.unit
def test_a_checkpoint_stays_with_its_item_until_the_answer_is_done(store, clock) -> None:
    store.seed("r", [Item(question_id="q", question="Eggs?", reference="18")])
    first = store.claim("r", "w1", 1, 30)
    [item] = first.items
    assert item.partial is None
    kept = Checkpoint("<think>3 hens", 3)
    assert store.checkpoint(first, {item.id: kept}) == 1
    assert store.release(first) == 1  # given back: the checkpoint stays
    second = store.claim("r", "w2", 1, 30)
    assert Checkpoint.from_dict(second.items[0].partial) == kept
    assert store.checkpoint(first, {item.id: Checkpoint("stale", 1)}) == 0  # a claim no longer held keeps nothing
    assert store.checkpoint(second, {item.id: Checkpoint("<think>3 hens lay", 4, (3,))}) == 1
    clock.advance(31)  # the worker died: the lease expires and the next claim takes the checkpoint over
    third = store.claim("r", "w3", 1, 30)
    assert Checkpoint.from_dict(third.items[0].partial) == Checkpoint("<think>3 hens lay", 4, (3,))
    assert store.items("r", texts=False)[0].partial is None  # reports never read it
    assert store.complete(third, {item.id: Result(response="#### 18", predicted="18", correct=True)}) == 1
    assert store.items("r")[0].partial is None  # done: the checkpoint is gone


def reply(body: dict) -> tuple[str, str]:
    """The first worker's long trace; a continuation gets the rest of it and the answer."""
    if body["messages"][-1]["role"] == "assistant":
        return REST, "stop"
    return "<think>" + "".join(f" step{n}" for n in range(STEPS)) + REST, "stop"


@pytest.fixture
def streaming(prefect_env, tmp_path: Path):
    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"question": "Eggs?", "answer": "18"}) + "\n")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", dataset=str(dataset)))
    server = ScriptedServer([], reply=reply, stream_delay=0.02, hold_after=HELD)
    yield url, server
    server.close()


def start_worker(url: str, server: ScriptedServer, tmp_path: Path, env: dict, *more: str) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "flows/generate.py"), "--store", url, "--run", "r", "--engine", "openai",
            "--api-base", server.url, "--model", "scripted-model", "--worker", "first", "--max-new-tokens", "1000",
            "--checkpoint-seconds", "1", *more]
    return subprocess.Popen(args, cwd=tmp_path, env=cli_env(env), start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_and_check(url: str, server: ScriptedServer, store: SqliteStore) -> None:
    """Another worker continues the checkpoint: the text once, the tokens once, where it was continued."""
    [before] = store.items("r")
    kept = Checkpoint.from_dict(before.partial)
    assert kept.text.startswith("<think> step0 step1") and 0 < kept.tokens < STEPS
    assert kept.tokens == len(kept.text.split())  # one token per word on this server
    generate(WorkerConfig(store=url, run="r", model={"model": "scripted-model"}, worker="second", lease_seconds=10,
                          engine={"name": "openai", "api_base": server.url}, sampling={"max_new_tokens": 1000}))
    [after] = store.items("r")
    answer = after.result
    assert (after.status, answer.correct, answer.response, answer.worker) == ("done", True, "#### 18", "second")
    assert answer.reasoning == (kept.text + REST.split("</think>")[0]).removeprefix("<think>").strip()
    assert answer.reasoning.count("step0 ") == 1 and answer.continued_at == [kept.tokens]
    assert answer.tokens == kept.tokens + len(REST.split())  # counted once
    asked = [request["body"] for request in server.requests if request["body"]["max_tokens"] > 1]
    goes_on = asked[-1]
    assert goes_on["messages"][-1] == {"role": "assistant", "content": kept.text} and goes_on["continue_final_message"]
    assert goes_on["max_tokens"] == 1000 - kept.tokens
    assert after.partial is None


def test_sigterm_keeps_the_answer_so_far_and_another_worker_continues_it(streaming, prefect_env,
                                                                          tmp_path: Path) -> None:
    url, server = streaming
    store = SqliteStore(tmp_path / "w.db")
    # checkpoints every 10 minutes: the one kept is the one taken when the grace period ends
    worker = start_worker(url, server, tmp_path, prefect_env, "--grace-seconds", "1", "--checkpoint-seconds", "600")
    assert wait_until(lambda: bool(server.streamed) and server.streamed[0] >= HELD, timeout=120), worker
    worker.send_signal(signal.SIGTERM)  # its grace ends long before its answer does
    assert wait_until(lambda: store.items("r")[0].status == "pending", timeout=60)  # given back at the grace end
    server.release.set()  # the answer it gave back ends (refused at write); the worker exits
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0 and "stopped (SIGTERM)" in output, output
    assert "checkpoints: answers streamed for 600 s are kept with their items" in output
    [item] = store.items("r")
    # given back with its answer so far (all HELD words unless a loaded machine had not read them all yet)
    assert item.status == "pending" and 0 < item.partial["tokens"] <= HELD, item
    finish_and_check(url, server, store)


def test_sigkill_leaves_the_last_checkpoint_for_whoever_takes_the_lease_over(streaming, prefect_env,
                                                                             tmp_path: Path) -> None:
    url, server = streaming
    store = SqliteStore(tmp_path / "w.db")
    worker = start_worker(url, server, tmp_path, prefect_env, "--lease-seconds", "10")
    assert wait_until(lambda: bool(store.items("r")[0].partial), timeout=120), "a checkpoint every second"
    worker.send_signal(signal.SIGKILL)  # no warning: the lease must expire
    worker.wait(timeout=10)
    server.release.set()
    [item] = store.items("r")
    assert item.status == "running" and item.worker == "first"
    finish_and_check(url, server, store)
    assert store.items("r")[0].attempts == 1  # taken over when the lease expired (an attempt spent)


def test_a_budget_forced_answer_given_back_mid_answer_is_continued_in_its_answer_part(prefect_env,
                                                                                     tmp_path: Path) -> None:
    """Streamed: the trace cut at the budget and closed; SIGTERM in the answer's part; the next worker
    goes on with what is left of the answer's budget, the answer still marked forced, counted once."""
    budget, closing = 20, forced_close("</think>")

    def reply(body: dict) -> tuple[str, str]:
        so_far = body["messages"][-1]["content"] if body["messages"][-1]["role"] == "assistant" else ""
        if not so_far:
            return "<think>" + "".join(f" step{n}" for n in range(budget - 1)), "length"  # cut at the budget
        if " more" in so_far:  # the second worker
            return " done" * 5, "stop"
        return "18}" + " more" * 39, "length"  # held after HELD words: stopped in the answer's part

    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"question": "Eggs?", "answer": "18"}) + "\n")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", dataset=str(dataset)))
    server = ScriptedServer([], reply=reply, hold_after=HELD)
    thinking = {"thinking": "on", "thinking_budget": budget, "answer_budget": 60, "max_new_tokens": 1000}
    try:
        worker = start_worker(url, server, tmp_path, prefect_env, "--grace-seconds", "1", "--checkpoint-seconds",
                              "600", "--thinking", "on", "--thinking-budget", str(budget), "--answer-budget", "60")
        assert wait_until(lambda: len(server.streamed) == 2 and server.streamed[1] >= HELD, timeout=120), worker
        worker.send_signal(signal.SIGTERM)
        store = SqliteStore(tmp_path / "w.db")
        assert wait_until(lambda: store.items("r")[0].status == "pending", timeout=60)
        server.release.set()
        output = worker.communicate(timeout=120)[0]
        assert worker.returncode == 0 and "checkpoints: answers streamed for 600 s" in output, output
        [item] = store.items("r")
        kept = Checkpoint.from_dict(item.partial)
        assert kept.text.startswith("<think> step0") and closing + "18} more" in kept.text
        assert budget < kept.tokens <= budget + HELD  # all HELD words unless a loaded machine had not read them all
        assert kept.tokens == len(kept.text.replace(closing, " ").split())  # one a word; the closing has none
        generate(WorkerConfig(store=url, run="r", model={"model": "scripted-model"}, worker="second",
                              engine={"name": "openai", "api_base": server.url}, sampling=thinking))
    finally:
        server.close()
    goes_on = server.requests[-1]["body"]
    assert goes_on["messages"][-1] == {"role": "assistant", "content": kept.text}
    assert goes_on["max_tokens"] == budget + 60 - kept.tokens  # what is left of the answer's budget
    [item] = store.items("r")
    answer = item.result
    assert (item.status, answer.correct, answer.thinking_forced, answer.reasoning_complete) == ("done", True, True,
                                                                                                 False)
    assert answer.reasoning.count("step0 ") == 1 and answer.response.startswith(FORCED_LEAD_IN + "18} more")
    assert answer.tokens == kept.tokens + 5 and answer.continued_at == [kept.tokens]  # counted once


class SteppedEngine:
    """Streams each request's scripted words, one a step (an empty group), then its answer; one
    request at a time, so a test reads the answer so far between the steps it takes."""

    name = device = label = "stepped"

    def __init__(self, script: Callable[[Request], tuple[list[str], str]]):
        self.script = script
        self.asked: list[Request] = []

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        while (requests := feeder.take(1, wait=True)) is not None:
            for request in requests:
                self.asked.append(request)
                words, finish = self.script(request)
                streamed: list[str] = []
                if request.on_progress:
                    request.on_progress(lambda streamed=streamed: ("".join(streamed), len(streamed)))
                for word in words:
                    streamed.append(word)
                    yield []
                yield [(request, Generation("".join(words), tokens=len(words), finish_reason=finish))]

    def close(self) -> None: ...


def reads_between_steps(engine: Engine, request: Request, sampling: SamplingConfig) -> tuple[list, Generation]:
    """What the worker's reader of `request`'s answer says after each step, and the answer."""
    reader: list[Callable[[], tuple[str, int]]] = []
    reads, finished = [], []
    for group in engine.run(ListFeeder([replace(request, on_progress=reader.append)]), sampling):
        finished += group
        reads.append(reader[0]() if reader else None)
    [(_, answer)] = finished
    return reads, answer


@pytest.mark.unit
def test_a_budget_forced_answer_is_read_over_both_parts() -> None:
    """The worker reads the whole answer so far: the first part as it streams, only what is kept
    between the parts, then the first part, the closing and the second part (tokens of both)."""
    closing = forced_close("</think>")
    engine = SteppedEngine(lambda request: (["<think>", " a", " b", " c"], "length") if isinstance(request.prompt, str)
                           else ([" 18", "}"], "stop"))
    reads, answer = reads_between_steps(BudgetEngine(engine, thinking_budget=4, answer_budget=3),
                                        Request(key="q", prompt="Eggs?"), SamplingConfig(thinking="on"))
    assert reads == [("<think>", 1), ("<think> a", 2), ("<think> a b", 3), ("<think> a b c", 4),
                     ("", 0),  # between the parts: nothing more than was kept (the keeper writes nothing smaller)
                     ("<think> a b c" + closing + " 18", 5), ("<think> a b c" + closing + " 18}", 6),
                     ("", 0)]  # done: the worker writes the answer itself
    assert (answer.text, answer.tokens, answer.thinking_forced, answer.reasoning_tokens) == (
        "<think> a b c" + closing + " 18}", 6, True, 4)


@pytest.mark.unit
def test_an_answer_continued_from_a_checkpoint_goes_on_in_its_part_with_what_is_left_of_its_budget() -> None:
    closing = forced_close("</think>")
    engine = SteppedEngine(lambda request: ([" x"] * request.max_new_tokens, "length"))
    budget = BudgetEngine(engine, thinking_budget=4, answer_budget=3)
    asked = Request(key="q", prompt="Eggs?")
    # taken over past the budget, its trace closed there: the answer's part goes on, still forced
    _, answer = reads_between_steps(budget, continued(asked, "<think> a b c" + closing + " 1", tokens_so_far=5),
                                    SamplingConfig())
    assert engine.asked[-1].max_new_tokens == 2 and (answer.text, answer.thinking_forced) == (" x x", True)
    # taken over within the budget: what is left of it, then closed, both in the one assistant turn
    _, answer = reads_between_steps(budget, continued(asked, "<think> a", tokens_so_far=2), SamplingConfig())
    first, second = engine.asked[-2:]
    assert (first.max_new_tokens, second.max_new_tokens, answer.thinking_forced) == (2, 3, True)
    assert second.prompt == [{"role": "user", "content": "Eggs?"},
                             {"role": "assistant", "content": "<think> a x x" + closing}]
    assert answer.reasoning_tokens == 2  # of the new tokens: the worker adds the checkpoint's


def test_a_code_execution_answer_is_read_without_code_not_yet_run() -> None:
    """The part that writes code is read up to the code (a checkpoint never ends with code whose
    output the model has not read); while it runs, what was kept; then the code, its output and on."""
    code = "\n```python\nprint(6 * 3)\n```\n"

    def script(request: Request) -> tuple[list[str], str]:
        return (["Let", " me", code], "stop") if isinstance(request.prompt, str) else ([" So", " 18."], "stop")

    reads, answer = reads_between_steps(CodeLoopEngine(SteppedEngine(script)), Request(key="q", prompt="Eggs?"),
                                        SamplingConfig())
    ran = "Let me" + code.rstrip("\n") + "\n```output\n18\n```\n"  # what follows the block's end is dropped
    assert [read for read in reads if read != ("", 0)] == [("Let", 1), ("Let me", 2), ("Let me", 2),
                                                           (ran + " So", 4), (ran + " So 18.", 5)]
    assert answer.text == ran + " So 18." and answer.tokens == 5 and answer.code_executions == 1
