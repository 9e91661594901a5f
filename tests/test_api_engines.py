"""Engines that talk to servers: the `openai` engine against a real `transformers serve` process
and against a scripted server that injects faults; bad settings through the command line; and
`vllm`-style managed servers (started per device from `--serve-command`, stopped at the end, and
gone when their worker is killed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

from flows.generate import generate
from flows.seed import seed
from tasks.config import SeedConfig, WorkerConfig
from tasks.local_servers import free_port
from tasks.store.sqlite import SqliteStore
from tasks.worker.loop import draw_seed
from tests.conftest import ROOT, cli_env, run_flow_cli
from tests.support import ScriptedServer

KEY = "sk-fleetgen-engine-test-0123456789"
SERVE = "transformers serve {model} --port {port} --device cpu --host 127.0.0.1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real OpenAI-compatible server process serving the tiny model's folder, offline."""
    from bench.standins import build_model

    model = build_model(tmp_path_factory.mktemp("served-model"), chat=True)
    port = free_port()
    process = subprocess.Popen(SERVE.format(model=model, port=port).split(), env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        pytest.fail("transformers serve did not become healthy in 180 s")
    yield f"http://127.0.0.1:{port}/v1", model
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def seeded(tmp_path: Path, questions: int = 6) -> tuple[str, SqliteStore]:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", limit=questions))
    return url, SqliteStore(tmp_path / "w.db")


def test_a_real_server_process_answers_every_item_once(prefect_env, tmp_path: Path, served) -> None:
    api, model = served
    url, store = seeded(tmp_path)
    result = generate(WorkerConfig(store=url, run="r", model={"model": str(model)}, batch_size=4,
                                   engine={"name": "openai", "api_base": f"{api},{api}", "concurrency": 2},
                                   sampling={"max_new_tokens": 8}))
    items = store.items("r")
    assert {item.status for item in items} == {"done"} and len(items) == 6
    assert {item.result.engine for item in items} == {"openai"}
    assert all(1 <= item.result.tokens <= 8 for item in items)  # counted by the server (usage)
    port = api.split(":")[2].split("/")[0]
    assert set(result["devices"]) == {f"127.0.0.1:{port}#0", f"127.0.0.1:{port}#1", "all"}  # both, even one idle
    assert result["devices"]["all"]["done"] == 6


def test_faults_are_retried_or_given_back_and_the_key_never_shows(prefect_env, tmp_path: Path, monkeypatch,
                                                                   capsys, caplog) -> None:
    script = ["ok", "429", "ok", "500", "ok", "hang", "ok", "malformed", "ok", "drop", "ok"]
    server = ScriptedServer(script)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    url, store = seeded(tmp_path)
    try:
        generate(WorkerConfig(store=url, run="r", model={"model": "scripted-model"}, batch_size=2,
                              engine={"name": "openai", "api_base": server.url, "concurrency": 1,
                                      "request_timeout": 2}))
    finally:
        server.close()
    items = store.items("r")
    assert {item.status for item in items} == {"done"}  # every item done once
    assert sorted(item.attempts for item in items) == [0, 0, 0, 0, 0, 1]  # the malformed answer was given back
    assert all(item.result.predicted == "7" and item.result.tokens == 6 for item in items)  # usage says 6
    assert {request["authorization"] for request in server.requests} == {f"Bearer {KEY}"}
    assert all(request["body"]["max_tokens"] in (1, 512) for request in server.requests)
    seeds = {request["body"].get("seed") for request in server.requests if request["body"]["max_tokens"] > 1}
    assert seeds == {draw_seed(0, item) for item in items} and len(seeds) == 6  # each sample its own draw
    assert {item.result.seed for item in items} == {None}  # greedy: no draw to record
    captured = capsys.readouterr()
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().removeprefix("sqlite+aiosqlite:///")).parent
    places = [captured.out, captured.err, caplog.text, (tmp_path / "w.db").read_bytes().decode("latin-1"),
              *(path.read_bytes().decode("latin-1") for path in database.iterdir() if path.is_file())]
    assert not [place for place in places if KEY in place]


def test_a_request_that_keeps_failing_fails_its_item_not_the_worker(prefect_env, tmp_path: Path) -> None:
    # one question's three attempts all fail; one is longer than the server's context: failed at once
    server = ScriptedServer([], poison="POISON", too_long="LONG")
    dataset = tmp_path / "four.jsonl"
    questions = ("Apples?", "POISON pears?", "Figs?", "LONG plums?")
    dataset.write_text("".join(f'{{"question": "{q}", "answer": "7"}}\n' for q in questions))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", dataset=str(dataset)))
    store = SqliteStore(tmp_path / "w.db")
    try:
        result = generate(WorkerConfig(store=url, run="r", model={"model": "scripted-model"}, batch_size=1,
                                       engine={"name": "openai", "api_base": server.url, "concurrency": 1}))
    finally:
        server.close()
    long, poisoned = sorted((item for item in store.items("r") if item.status == "failed"), key=lambda i: i.question)
    assert poisoned.attempts == 3 and poisoned.question == "POISON pears?"
    assert "stream ended before the answer did" in poisoned.error, poisoned.error  # streamed: no SSE came back
    assert long.attempts == 1 and long.question == "LONG plums?"  # no retry: it cannot succeed
    assert long.error.startswith("UnanswerableItem: the server refused the prompt as too long")
    assert "maximum context length is 64 tokens" in long.error
    assert sum("LONG" in json.dumps(request["body"]["messages"]) for request in server.requests) == 1
    assert result["devices"]["all"]["done"] == 2


@pytest.mark.parametrize("settings, message", [
    (["--engine", "openai", "--api-base", "http://127.0.0.1:9/v1"], "Cannot reach the OpenAI-compatible server"),
    (["--engine", "openai", "--api-base", "{scripted}", "--model", "wrong-model"],
     "answered 404 for model 'wrong-model'"),
    (["--engine", "openai", "--api-base", "{scripted}", "--model", "scripted-model", "--api-key-env", "NO_SUCH_KEY"],
     "--api-key-env names NO_SUCH_KEY, but that environment variable is not set"),
    (["--engine", "openai", "--api-base", "{plain}", "--model", "m"], "did not answer a chat completion"),
    (["--engine", "openai"], "--engine openai needs --api-base"),
    (["--engine", "nope"],
     "engine.name (--engine) = 'nope': Input should be 'auto', 'hf-static', 'hf', 'openai' or 'vllm'"),
])
def test_bad_engine_settings_are_one_clear_paragraph(tmp_path: Path, settings: list[str], message: str) -> None:
    import http.server
    import threading

    scripted = ScriptedServer([])
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)  # not an API
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    urls = {"{scripted}": scripted.url, "{plain}": f"http://127.0.0.1:{plain.server_address[1]}/v1"}
    store = SqliteStore(tmp_path / "fleetgen.db")
    store.ensure_run("r", {})
    try:
        result = run_flow_cli("generate.py", "--run", "r", *[urls.get(s, s) for s in settings], cwd=tmp_path,
                              timeout=120)
    finally:
        scripted.close()
        plain.shutdown()
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and store.items("r") == [] and store.runs() == ["r"]


TINY_SERVER = """
import http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer({"status": "ok"})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]})

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()  # argv: model, port[, context]
"""


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(tmp_path: Path, monkeypatch) -> None:
    """The port chosen is bound by another program before the server binds it: the server dies
    with "Address already in use", and the engine starts it again on another port."""
    from tasks.config import EngineConfig, ModelConfig
    from tasks.engines import served

    script = tmp_path / "tiny_server.py"
    script.write_text(TINY_SERVER)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken, free_port()])
    monkeypatch.setattr(served, "free_port", lambda: next(ports))
    settings = EngineConfig(name="vllm", serve_timeout=60,
                            serve_command=f"{sys.executable} {script} {{model}} {{port}} {{max_model_len}}")
    engine = served.ServedEngine(ModelConfig(model="m"), device="cpu", label="cpu", settings=settings,
                                 context_tokens=18432)
    try:
        assert engine.process.poll() is None and f":{taken}/" not in engine.device
        assert engine.process.args[-1] == "18432"  # {max_model_len} filled in
        assert httpx.get(engine.device.removesuffix("/v1") + "/health").status_code == 200
    finally:
        engine.close()
        squatter.close()
    assert engine.process.poll() is not None


def server_pids(model: Path) -> list[int]:
    """The processes serving this test's model (their command lines name its folder)."""
    lines = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in lines if f"serve {model} " in line]


def test_managed_servers_per_device_and_none_left_behind(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    """`--engine vllm` with `--serve-command` pointing at `transformers serve`: one server per
    device (cpu,cpu), all items done, no server left at the end (a worker killed mid-run takes its
    servers with it: tests/test_vllm.py, with real vLLM)."""
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="r", limit=30))
    args = [sys.executable, str(ROOT / "flows/generate.py"), "--run", "r", "--model", str(tiny_model),
            "--engine", "vllm", "--serve-command", SERVE, "--devices", "cpu,cpu", "--batch-size", "2",
            "--max-new-tokens", "48", "--concurrency", "2"]
    env = cli_env({**prefect_env, "HF_HUB_OFFLINE": "1"})
    worker = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = SqliteStore(tmp_path / "fleetgen.db")
    deadline = time.monotonic() + 240
    while not any(item.status == "done" for item in store.items("r")):
        assert worker.poll() is None and time.monotonic() < deadline, (
            worker.stdout.read() if worker.poll() is not None else "no answer in time")
        time.sleep(0.5)
    assert len(server_pids(tiny_model)) == 2  # one server per device
    output = worker.communicate(timeout=400)[0]
    assert worker.returncode == 0, output
    assert {item.status for item in store.items("r")} == {"done"} and {item.result.engine for item in
                                                                       store.items("r")} == {"vllm"}
    assert server_pids(tiny_model) == []  # stopped at the end of the run


def test_a_started_servers_context_holds_the_runs_longest_prompt(prefect_env, tmp_path: Path,
                                                                   tiny_model: Path) -> None:
    """A question of some 5,000 tokens (past the 2,048 kept for prompts): the worker measures the run's
    longest prompts with the model's tokenizer and starts the server with room for it."""
    from transformers import AutoTokenizer

    from tasks.engines.hf_model import encode_prompts
    from tasks.store.models import Item
    from tasks.worker.chat import item_messages

    script = tmp_path / "tiny_server.py"  # records the {max_model_len} it was started with
    script.write_text(TINY_SERVER.replace("http.server.HTTPServer(", 'open(sys.argv[4], "w").write(sys.argv[3])\n'
                                                                     "http.server.HTTPServer("))
    recorded = tmp_path / "context.txt"
    store = SqliteStore(tmp_path / "w.db")
    long_one = Item(question_id="long", question="How many apples? " * 1250, reference="7")
    store.ensure_run("r", {})
    store.seed("r", [Item(question_id="short", question="1+1?", reference="2"), long_one])
    generate(WorkerConfig(store=f"sqlite:///{tmp_path / 'w.db'}", run="r", model={"model": str(tiny_model)},
                          devices="cpu", sampling={"max_new_tokens": 8}, checkpoint_seconds=0, engine={  # unstreamed
                              "name": "vllm", "serve_timeout": 60,
                              "serve_command": f"{sys.executable} {script} {{model}} {{port}} {{max_model_len}} "
                                               f"{recorded}"}))
    (encoded,) = encode_prompts(AutoTokenizer.from_pretrained(tiny_model), [item_messages(long_one, "step_by_step")])
    tokens = len(encoded)
    assert tokens > 4096 and int(recorded.read_text()) == tokens + 8
    assert {item.status for item in store.items("r")} == {"done"}
