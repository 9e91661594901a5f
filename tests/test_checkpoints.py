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
from pathlib import Path

import pytest

from flows.generate import generate
from flows.seed import seed
from tasks.config import SeedConfig, WorkerConfig
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
