"""The worker flow end to end with tiny local models: in-process under the Prefect test harness,
and as real worker processes sharing one SQLite store (one of them killed with SIGKILL)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.generate import generate
from flows.seed import seed
from tasks.config import ModelConfig, SamplingConfig, SeedConfig, WorkerConfig
from tasks.engines.hf_static import HFStaticEngine
from tasks.evaluation.metrics import evaluate_items
from tasks.prefect_server import read_state, stop_server
from tasks.store.sqlite import SqliteStore
from tasks.worker.chat import item_messages
from tasks.worker.loop import draw_seed
from tests.conftest import ROOT, cli_env, run_flow_cli

TINY = {"sampling": {"max_new_tokens": 6}, "lease_seconds": 30.0}


def worker(url: str, run: str, model_path: Path, **settings) -> dict:
    """Run the generate flow in-process, settings as a Python caller passes them."""
    settings = {**TINY, **settings}
    settings["model"] = {"model": str(model_path), **settings.get("model", {})}
    return generate(WorkerConfig(store=url, run=run, **settings))


def assert_all_done_once(store: SqliteStore, run: str, expected: int) -> list:
    items = store.items(run)
    assert len(items) == expected and {item.status for item in items} == {"done"}
    for item in items:
        result = item.result
        assert result.response is not None and result.tokens >= 1 and result.seconds is not None
        assert result.worker == item.worker and result.device and result.engine in ("hf-static", "hf")
        assert result.finish_reason in ("stop", "length") and result.prompt and result.prompt_hash
    return items


def test_two_devices_in_threads_finish_the_run(prefect_env, tmp_path: Path, tiny_model: Path, caplog) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", limit=12, samples=2))
    result = worker(url, "r", tiny_model, devices="cpu,cpu", batch_size=4, worker="w1")
    assert "run 'r' asks 2 samples per question, but --temperature is 0: they will be identical" in caplog.text
    items = assert_all_done_once(SqliteStore(tmp_path / "w.db"), "r", 24)
    assert {item.result.device for item in items} == {"cpu#0", "cpu#1"}
    devices = result["devices"]
    assert devices["all"]["done"] == 24 and devices["cpu#0"]["tokens_per_second"] > 0
    assert devices["all"]["tokens_per_second"] == pytest.approx(
        devices["cpu#0"]["tokens_per_second"] + devices["cpu#1"]["tokens_per_second"], abs=0.15)
    assert all(item.result.model == ModelConfig(model=str(tiny_model)).model_dump() for item in items)


def test_adapter_and_llm_extraction_paths(prefect_env, tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                         monkeypatch) -> None:
    """A merged adapter through the worker with `--extract llm`; and the second pass on the real
    model: asked for exactly the answers the rules cannot read, its find kept as the prediction."""
    from tasks.engines import Generation, Request
    from tasks.engines.hf_static import HFStaticEngine
    from tasks.grading.extract import extract_answer
    from tasks.worker import results

    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", limit=6))
    worker(url, "r", tiny_model, model={"adapter": str(tiny_adapter), "merge_adapter": True}, devices="cpu",
           batch_size=3, extract="llm")
    items = assert_all_done_once(SqliteStore(tmp_path / "w.db"), "r", 6)
    assert items[0].result.model["adapter"] == str(tiny_adapter) and items[0].result.model["merge_adapter"]

    asked: list[list[Request]] = []
    real_answer_all = results.answer_all

    def counted(engine, requests, sampling):  # the real second pass, what it was asked recorded
        asked.append(requests)
        return real_answer_all(engine, requests, sampling)

    monkeypatch.setattr(results, "answer_all", counted)
    engine = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")
    readable = Generation("So it is 12.", tokens=5, finish_reason="stop")
    unreadable = Generation("I would rather not say what it is.", tokens=9, finish_reason="stop")
    assert extract_answer(readable.text) == "12" and extract_answer(unreadable.text) is None
    results.extract_with_llm(engine, [(Request(key="a", prompt="q"), readable),
                                      (Request(key="b", prompt="q"), unreadable)], SamplingConfig())
    (requests,) = asked
    assert len(requests) == 1 and unreadable.text in str(requests[0].prompt)  # only the unreadable one
    assert readable.extracted is None  # the rules' reading stands
    reply = real_answer_all(engine, requests, results.EXTRACT_SAMPLING)[0]
    assert unreadable.extracted == extract_answer(reply.text)  # greedy: the same reply the pass read


def test_continuous_batching_on_two_devices_with_an_adapter(prefect_env, tmp_path: Path, tiny_model: Path,
                                                            tiny_adapter: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", limit=10, samples=2))
    result = worker(url, "r", tiny_model, model={"adapter": str(tiny_adapter)}, devices="cpu,cpu", batch_size=4,
                    engine={"name": "hf", "max_in_flight": 3})
    items = assert_all_done_once(SqliteStore(tmp_path / "w.db"), "r", 20)
    assert {item.result.engine for item in items} == {"hf"} and {item.result.device for item in items} == {"cpu#0",
                                                                                                        "cpu#1"}
    assert items[0].result.model["adapter"] == str(tiny_adapter) and result["devices"]["all"]["done"] == 20


def test_sampling_settings_reach_the_answers(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    """Two samples of one question differ at temperature 1.5, each drawn with its own recorded
    seed (the engine gives the same answer again with it); at temperature 0 both are the engine's
    greedy answer."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    for run, temperature in (("hot", 1.5), ("greedy", 0.0)):
        seed(SeedConfig(store=url, run=run, limit=1, samples=2))
        worker(url, run, tiny_model, devices="cpu", batch_size=2,
               sampling={"max_new_tokens": 16, "temperature": temperature, "seed": 3})
    store = SqliteStore(tmp_path / "w.db")
    hot = [item.result.response for item in store.items("hot")]
    greedy = [item.result.response for item in store.items("greedy")]
    assert hot[0] != hot[1]
    engine = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu")
    chat = item_messages(store.items("greedy")[0], "step_by_step")
    expected = engine.generate([chat], SamplingConfig(max_new_tokens=16))[0].text
    assert greedy == [expected, expected]
    assert {item.result.sampling["temperature"] for item in store.items("hot")} == {1.5}
    drawn = store.items("hot")
    assert [item.result.seed for item in drawn] == [draw_seed(3, item) for item in drawn]
    again = engine.generate([item_messages(drawn[1], "step_by_step")],
                            SamplingConfig(max_new_tokens=16, temperature=1.5, seed=3), seeds=[drawn[1].result.seed])
    assert again[0].text == hot[1]
    assert evaluate_items("hot", drawn)["counts"]["done"] == 2  # one way of answering: the seeds are the samples' own


SCRIPTED = {  # question -> (reference, a response the grader must read as right)
    "Share three quarters": ("0.75", "Each gets $\\boxed{\\frac{3}{4}}$."),
    "Which ratio": ("\\frac{1}{\\sqrt{2}}", "So the ratio is $\\dfrac{\\sqrt{2}}{2}$."),
    "Which factor": ("(r+5)(r+5)", "Final Answer: The final answer is $(r+5)^2$. I hope it is correct."),
    "How many eggs": ("18", "She sells 9 eggs at $2 each.\n#### 18"),
}


def test_the_worker_grades_on_its_save_thread_as_seeding_does(prefect_env, tmp_path: Path, monkeypatch) -> None:
    """Symbolic answers graded by a running worker (its background save thread) get the same
    verdicts as the same responses brought along and graded at seeding (the main thread)."""
    from tasks.worker import steps
    from tests.support import ScriptedEngine

    rows = [{"id": f"q{n}", "question": question, "answer": reference, "response": response}
            for n, (question, (reference, response)) in enumerate(SCRIPTED.items())]
    dataset = tmp_path / "scripted.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="worker", dataset=str(dataset)))
    seed(SeedConfig(store=url, run="seeded", dataset=str(dataset), response_field="response"))
    responses = {question: response for question, (_, response) in SCRIPTED.items()}
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: ScriptedEngine(responses))
    generate(WorkerConfig(store=url, run="worker", devices="cpu", batch_size=4))
    store = SqliteStore(tmp_path / "w.db")
    by_worker = {item.question_id: item.result for item in store.items("worker")}
    by_seed = {item.question_id: item.result for item in store.items("seeded")}
    assert {q: (r.predicted, r.correct) for q, r in by_worker.items()} == {
        q: (r.predicted, r.correct) for q, r in by_seed.items()}
    assert all(result.correct for result in by_worker.values()) and by_worker["q0"].engine == "scripted"


def test_default_run_is_seeded_from_gsm8k_test(prefect_env, tmp_path: Path, tiny_plain_model: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    generate(WorkerConfig(store=url, model={"model": str(tiny_plain_model)}, devices="cpu", batch_size=128,
                          sampling={"max_new_tokens": 2}, lease_seconds=60))
    assert_all_done_once(SqliteStore(tmp_path / "w.db"), "gsm8k-test", 1319)


def start_worker(tmp_path: Path, model: Path, name: str, *extra: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """A worker process with no Prefect API configured, as on a bare machine (the session's shared local server)."""
    args = [sys.executable, str(ROOT / "flows/generate.py"), "--run", "r", "--model", str(model), "--devices", "cpu",
            "--worker", name, *extra]
    return subprocess.Popen(args, cwd=tmp_path, env=cli_env(env), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_and_a_refine_at_once_share_one_local_prefect_server(tmp_path: Path, tiny_model: Path) -> None:
    """A cold machine: three commands start together; one starts the server, the others wait for it."""
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="r", limit=40))
    answered = tmp_path / "answered.jsonl"
    answered.write_text(json.dumps({"question": "1+1?", "answer": "2", "response": "#### 3"}) + "\n")
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="answered", dataset=str(answered),
                    response_field="response"))
    home = tmp_path / "cold-prefect-home"
    try:
        commands = [start_worker(tmp_path, tiny_model, f"p{n}", "--batch-size", "4", "--max-new-tokens", "8",
                                 env={"PREFECT_HOME": str(home)}) for n in range(2)]
        commands.append(subprocess.Popen([sys.executable, str(ROOT / "flows/refine.py"), "--run", "answered"],
                                         cwd=tmp_path, env=cli_env({"PREFECT_HOME": str(home)}), text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs = [command.communicate(timeout=400)[0] for command in commands]
        assert [command.returncode for command in commands] == [0, 0, 0], "\n\n".join(outputs)
        for output in outputs:
            assert "database is locked" not in output and "Traceback" not in output
        assert "Loading weights" not in "".join(outputs[:2])  # no loading bar per model copy
        # Which worker got how much depends on start-up timing (on a loaded machine one may even find the
        # run finished by the other: nothing to do, no model loaded); that the shares add up exactly does not.
        late = [output for output in outputs[:2] if "nothing to do" in output]
        assert len(late) < 2 and all("with engine hf-static (--engine auto: no CUDA GPU among the devices) on cpu"
                                     in output for output in outputs[:2] if output not in late), outputs
        assert "".join(outputs).count("starting a local Prefect server in the background") == 1, outputs
        assert "1 retries queued" in outputs[2]
        assert_all_done_once(SqliteStore(tmp_path / "fleetgen.db"), "r", 40)
        done = [int(found.group(1)) for output in outputs[:2]
                if (found := re.search(r"this worker did (\d+) items", output))]
        assert sum(done) == 40 and len(done) + len(late) == 2
        state = read_state(home / "fleetgen-server")
        with temporary_settings({PREFECT_API_URL: state["url"]}), get_client(sync_client=True) as client:
            names = {run.name for run in client.read_flow_runs()}
        assert names == {"r @ p0", "r @ p1", "answered"}  # every command's run in the one UI
        assert httpx.get(f"{state['ui']}/ui-settings").json()["api_url"] == state["url"]  # where its pages ask
    finally:
        stop_server(home / "fleetgen-server")


def test_a_killed_worker_is_finished_by_another(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="r", limit=40))
    store = SqliteStore(tmp_path / "fleetgen.db")
    doomed = start_worker(tmp_path, tiny_model, "doomed", "--batch-size", "4", "--max-new-tokens", "64",
                          "--lease-seconds", "10")
    deadline = time.monotonic() + 120
    while not any(item.status == "done" for item in store.items("r")):
        assert doomed.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker dies at once (the machine's Prefect server lives on)
    doomed.wait(timeout=10)
    held = {item.id for item in store.items("r") if item.status == "running" and item.worker == "doomed"}
    assert held, "the killed worker should die holding a claim"
    result = run_flow_cli("generate.py", "--run", "r", "--model", str(tiny_model), "--devices", "cpu", "--worker",
                          "rescuer", "--batch-size", "8", "--max-new-tokens", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    items = assert_all_done_once(store, "r", 40)
    assert {item.worker for item in items if item.id in held} == {"rescuer"}
    status = json.loads(run_flow_cli("status.py", "--run", "r", "--json", cwd=tmp_path).stdout.splitlines()[-1])
    assert status["done"] == 40 and status["workers"]["doomed"]["done"] >= 1


def test_offline_default_model_says_how_to_pass_a_local_one(prefect_env, tmp_path: Path) -> None:
    result = run_flow_cli("generate.py", cwd=tmp_path, env={**prefect_env, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "Cannot load model 'Qwen/Qwen2.5-0.5B-Instruct'" in result.stderr and "Pass --model" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_worker_on_a_finished_run_says_what_to_do_next_without_loading_a_model(prefect_env, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    dataset = tmp_path / "done.jsonl"
    dataset.write_text(json.dumps({"question": "1+1?", "answer": "2", "response": "#### 2"}) + "\n")
    seed(SeedConfig(store=url, run="done", dataset=str(dataset), response_field="response"))
    result = run_flow_cli("generate.py", "--run", "done", "--model", str(tmp_path / "no-such-model"), cwd=tmp_path,
                          env=prefect_env)  # a model that would fail to load: it is never loaded
    assert result.returncode == 0, result.stderr
    assert "nothing to do, run(s) done have nothing pending or running. Next: python flows/evaluate.py" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--run", "never-seeded"], "Run 'never-seeded' is not in the store"),
    (["--devices", "cuda:9"], "visible GPU"),
    (["--devices", "tpu"], "devices (--devices) = 'tpu': unknown device 'tpu'"),
    (["--engine", "hf", "--compile", "--devices", "cpu,cpu"],
     "--engine hf --compile runs on one device per worker, and --devices gives 2 (cpu, cpu)"),
    (["--prompt", "nope"], "prompt (--prompt) = 'nope': not a question template"),
    (["--prompt", "retry"], "prompt (--prompt) = 'retry': not a question template"),
    (["--temperature", "-1"],
     "sampling.temperature (--temperature) = '-1': Input should be greater than or equal to 0"),
    (["--quantization", "nf4"],
     "model.quantization (--quantization) = 'nf4': Input should be 'none', '4bit' or '8bit'"),
    (["--batch-size", "many"], "batch_size (--batch-size) = 'many': Input should be a valid integer"),
    (["--thinking", "off", "--thinking-budget", "512"], "--thinking-budget limits a reasoning trace, but --thinking "
                                                        "off asks for none"),
    (["--thinking", "maybe"], "sampling.thinking (--thinking) = 'maybe': Input should be 'auto', 'on' or 'off'"),
])
def test_bad_worker_arguments_fail_before_prefect_starts(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_flow_cli("generate.py", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Prefect server" not in result.stderr


def test_cpu_copies_share_the_cores(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    for run, flags, threads in (("auto", [], max(1, cores // 2)), ("flag", ["--cpu-threads", "3"], 3)):
        seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run=run, limit=4))
        result = run_flow_cli("generate.py", "--run", run, "--model", str(tiny_model), "--devices", "cpu,cpu",
                              "--max-new-tokens", "2", "--idle-exit", "0", *flags, cwd=tmp_path, env=prefect_env)
        assert result.returncode == 0, result.stderr
        assert f"CPU model copies: 2, torch threads: {threads} ({cores} cores)" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPUs (one model copy per GPU)")
def test_every_visible_gpu_gets_a_model_copy(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="r", limit=64))
    result = worker(url, "r", tiny_model, devices="auto", batch_size=8)
    items = assert_all_done_once(SqliteStore(tmp_path / "w.db"), "r", 64)
    assert {item.result.device for item in items} <= {f"cuda:{n}" for n in range(torch.cuda.device_count())}
    assert result["devices"]["all"]["done"] == 64
