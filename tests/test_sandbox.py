"""Code execution: hostile snippets contained in the real sandbox (real processes, nothing mocked),
and the tool loop driven through the worker, by a scripted engine and by the tiny real model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flows.evaluate import evaluate
from flows.generate import generate
from flows.seed import seed
from tasks.config import EvaluateConfig, ModelConfig, SamplingConfig, SeedConfig, WorkerConfig
from tasks.engines.code_loop import first_code, output_block
from tasks.engines.hf_static import HFStaticEngine
from tasks.errors import UserError
from tasks.export import sft_rows
from tasks.sandbox import LAYERS, SandboxPolicy, active_layers, execute, execute_many
from tasks.store.sqlite import SqliteStore
from tasks.worker import steps
from tests.conftest import run_flow_cli
from tests.support import ScriptedEngine, ScriptedServer

QUICK = SandboxPolicy(wall_seconds=5, cpu_seconds=5)
SECRET = "mongodb://alice:s3cr3t-in-env@db.example/fleet"


@pytest.fixture
def secret_in_environment(monkeypatch) -> None:
    monkeypatch.setenv("MONGODB_URI", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-in-env-123")


def test_layers_are_detected_and_the_basic_ones_always_hold() -> None:
    layers = active_layers()
    assert set(layers) == set(LAYERS)
    assert layers["own-session"] and layers["clean-environment"] and layers["resource-limits"]


HOSTILE = {
    "an endless loop": ("while True: pass", "TimeoutError: the code ran longer than 5 s"),
    "allocating 8 GiB": ("x = bytearray(8 * 1024 ** 3)", "MemoryError"),
    "a fork bomb": ("import os\nwhile True: os.fork()", "rror"),  # PermissionError (seccomp) or BlockingIOError
    "a socket to localhost": ("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)", "rror"),
    "a socket to a public address": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", "rror"),
    "printing 100 MB": ("import sys\nfor _ in range(100): sys.stdout.write('x' * 1024 * 1024)", ""),
    "a segfault": ("import ctypes\nctypes.string_at(0)", "SIGSEGV: it crashed"),
    "a thread bomb": ("import threading, time\nwhile True: threading.Thread(target=time.sleep, args=(30,)).start()",
                      "RuntimeError: can't start new thread"),
    "a subprocess": ("import subprocess\nsubprocess.run(['id'])", "rror"),
}


@pytest.mark.parametrize("what", HOSTILE)
def test_hostile_code_is_contained_and_reported_as_an_error(what: str) -> None:
    code, error = HOSTILE[what]
    started = time.monotonic()
    execution = execute(code, QUICK)
    assert execution.error is not None and error in execution.error, execution
    assert time.monotonic() - started < 15
    assert len(execution.output) <= 2000


WORKLOAD = """
import fractions, itertools, math, threading
import numpy as np
import sympy
x = sympy.symbols("x")
roots = sympy.solve(x**2 - 2, x)
det = round(float(np.linalg.det(np.eye(3) * 2)), 6)
big = 2 ** 100_000 % 97
third = fractions.Fraction(1, 3) ** 5
pairs = len(list(itertools.combinations(range(20), 3)))
found = []
worker = threading.Thread(target=lambda: found.append(math.comb(50, 25)))
worker.start()
worker.join()
open("scratch.txt", "w").write("kept")
print(roots, det, big, third, pairs, found[0], open("scratch.txt").read())
print("y" * 500_000)
"""


def test_the_allowlist_lets_real_math_code_run() -> None:
    """sympy, numpy (with its BLAS), fractions, itertools, big integers, a thread, a file in its
    folder and half a megabyte of output, all through the seccomp allowlist and the other layers."""
    execution = execute(WORKLOAD, QUICK)
    assert execution.error is None, execution.error
    assert all(execution.layers[name] for name in ("seccomp", "landlock", "mount-namespace")), execution.layers
    assert execution.output == "y" * 1999 + "\n"  # the end of the output, cut at its limit
    full = execute(WORKLOAD.replace('print("y" * 500_000)', ""), QUICK).output.strip()
    assert full == "[-sqrt(2), sqrt(2)] 8.0 61 1/243 1140 126410606437752 kept"


def test_its_environment_holds_no_secret(secret_in_environment) -> None:
    execution = execute("import os\nprint(dict(os.environ))", QUICK)
    assert execution.error is None and "HOME" in execution.output
    assert "s3cr3t" not in execution.output and "sk-in-env" not in execution.output


def test_it_writes_in_its_own_folder_only(tmp_path: Path) -> None:
    outside = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)  # even where anyone may write
    inside = execute("open('mine.txt', 'w').write('kept'); print(open('mine.txt').read())", QUICK)
    assert inside.error is None and inside.output.strip() == "kept"
    escape = execute(f"open({str(outside)!r}, 'w').write('x')", QUICK)
    if not (active_layers()["landlock"] or active_layers()["mount-namespace"]):
        pytest.skip("neither Landlock nor a mount namespace on this machine: writes outside are not blocked")
    assert escape.error and not outside.exists()


def test_exits_and_signals_to_others_are_contained() -> None:
    assert execute("import sys; sys.exit(0)", QUICK).error is None
    assert execute("import sys; sys.exit(3)", QUICK).error == "SystemExit: exited with code 3"
    parent = execute("import os, signal; os.kill(os.getppid(), signal.SIGTERM)", QUICK)
    assert parent.error is not None  # the worker lives on (this test process is it)


def test_executions_of_a_batch_run_in_parallel_and_share_nothing() -> None:
    codes = [f"import time\nx = {n}\ntime.sleep(1)\nprint(x * 2)" for n in range(4)]
    started = time.monotonic()
    results = execute_many(codes, QUICK)
    assert [r.output.strip() for r in results] == ["0", "2", "4", "6"]
    assert time.monotonic() - started < 4 * 1.0 + 2  # not one after another... on 2 cores, two at a time at worst
    leak = execute_many(["secret_value = 42", "print(globals().get('secret_value'))"], QUICK)
    assert leak[1].output.strip() == "None"


def test_the_model_sees_its_code_block_and_the_output() -> None:
    text = "Let me compute.\n```python\nprint(6 * 7)\n```\n```output\n41 (imagined)\n```\nSo 41."
    code, end = first_code(text)
    assert code == "print(6 * 7)\n" and text[:end].endswith("```")
    assert output_block("42\n", None) == "\n```output\n42\n```\n"
    assert output_block("", "ZeroDivisionError: division by zero").count("ZeroDivisionError") == 1


class CodeWritingEngine(ScriptedEngine):
    """Answers by the conversation so far: code, then code that uses the first output, then a
    boxed answer that uses the second."""

    @staticmethod
    def text_of(prompt) -> str:
        return prompt[-1]["content"] if prompt[-1]["role"] == "assistant" else ""


SCRIPT = {
    "```output\n84\n```": "Half of it: \\boxed{42}",
    "```output\n42\n```": "Double it.\n```python\nprint(42 * 2)\n```\n```output\nimagined\n```\nnever read",
    "": "Compute.\n```python\nprint(6 * 7)\n```",
}


def test_the_worker_runs_two_executions_and_grades_the_boxed_answer(prefect_env, tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    dataset = tmp_path / "q.jsonl"
    dataset.write_text("".join(f'{{"question": "q{n}: half of 84?", "answer": "42"}}\n' for n in range(6)))
    seed(SeedConfig(store=url, run="tools", dataset=str(dataset)))
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: CodeWritingEngine(SCRIPT, batch_size=4))
    generate(WorkerConfig(store=url, run="tools", devices="cpu", code_execution=True, lease_seconds=30))
    items = SqliteStore(tmp_path / "w.db").items("tools")
    assert len(items) == 6 and {item.status for item in items} == {"done"}
    for item in items:
        result = item.result
        assert (result.code_executions, result.code_errors, result.correct, result.predicted) == (2, 0, True, "42")
        assert result.prompt == "code" and result.code_seconds > 0
        assert result.response == ("Compute.\n```python\nprint(6 * 7)\n```\n```output\n42\n```\nDouble it.\n```python\n"
                                   "print(42 * 2)\n```\n```output\n84\n```\nHalf of it: \\boxed{42}")
    code = evaluate(EvaluateConfig(store=url, run="tools"))["runs"][0]["code"]
    assert code == {"answers": 6, "used_code": 1.0, "executions_per_answer": 2.0, "error_rate": 0.0,
                    "accuracy_with_code": 1.0, "accuracy_without_code": None}
    chats = sft_rows(SqliteStore(tmp_path / "w.db").items("tools")).rows  # the assistant turn keeps code and output
    assert len(chats) == 6 and chats[0]["messages"][-1]["content"] == items[0].result.response


def test_an_answer_so_far_is_continued_where_it_stopped(tiny_model: Path) -> None:
    model = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")
    so_far = "Compute.\n```python\nprint(6 * 7)\n```\n```output\n42\n```\n"
    text = model.prompt_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": so_far}])
    assert text.rstrip().endswith("```output\n42\n```")  # no end of turn: the model goes on from here
    answers = model.generate([[{"role": "user", "content": "q"}]], SamplingConfig(max_new_tokens=6),
                             stop=("```output",))  # transformers' stop strings, on a batch
    assert answers[0].tokens <= 6


def test_an_openai_compatible_server_is_asked_to_continue_the_answer(prefect_env, tmp_path: Path) -> None:
    server = ScriptedServer([], answer="Compute.\n```python\nprint(6 * 7)\n```")  # code every time
    url = f"sqlite:///{tmp_path / 'w.db'}"
    dataset = tmp_path / "q.jsonl"
    dataset.write_text('{"question": "6 times 7?", "answer": "42"}\n')
    seed(SeedConfig(store=url, run="api", dataset=str(dataset)))
    try:
        generate(WorkerConfig(store=url, run="api", model={"model": "scripted-model"}, code_execution=True,
                              max_code_executions=2, engine={"name": "openai", "api_base": server.url}))
    finally:
        server.close()
    (item,) = SqliteStore(tmp_path / "w.db").items("api")
    assert item.status == "done" and (item.result.code_executions, item.result.code_errors) == (2, 0)
    assert item.result.response.count("```output\n42\n```") == 2
    rounds = [request["body"] for request in server.requests if request["body"]["max_tokens"] > 1]
    assert len(rounds) == 3 and all(body["stop"] == ["```output"] for body in rounds)
    assert "continue_final_message" not in rounds[0] and rounds[0]["messages"][-1]["role"] == "user"
    for body in rounds[1:]:
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        so_far = body["messages"][-1]
        assert so_far["role"] == "assistant" and so_far["content"].rstrip().endswith("```output\n42\n```")


def test_the_code_prompt_needs_code_execution() -> None:
    with pytest.raises(UserError, match="--prompt code asks the model to write code"):
        WorkerConfig(prompt="code")
    with pytest.raises(UserError, match="--extract llm cannot be combined with --code-execution"):
        WorkerConfig(code_execution=True, extract="llm")
    assert WorkerConfig(code_execution=True).prompt == "code"
    assert WorkerConfig(code_execution=True, prompt="step_by_step").prompt == "step_by_step"


def test_the_tiny_model_with_code_execution_through_the_command_line(prefect_env, tmp_path: Path,
                                                                    tiny_model: Path) -> None:
    """Random weights rarely write code: nothing must break, every item done once."""
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="r", limit=12))
    result = run_flow_cli("generate.py", "--run", "r", "--model", str(tiny_model), "--devices", "cpu", "--engine", "hf",
                          "--code-execution", "--max-new-tokens", "16", cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    assert "code execution: up to 6 per item, 10 s each; sandbox layers on: own-session" in result.stderr
    items = SqliteStore(tmp_path / "fleetgen.db").items("r")
    assert len(items) == 12 and {item.status for item in items} == {"done"}
    assert all(item.result.code_executions == 0 and item.result.prompt == "code" for item in items)
