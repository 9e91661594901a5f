"""Bring-your-own grading, refine rounds, evaluation metrics, export, deployments, fleet progress."""

from __future__ import annotations

import json
import logging.handlers
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client

from flows.evaluate import evaluate
from flows.export import export
from flows.generate import generate
from flows.refine import refine
from flows.seed import seed
from tasks.config import (
    EvaluateConfig,
    ExportConfig,
    ModelConfig,
    RefineConfig,
    SeedConfig,
    ServeConfig,
    WorkerConfig,
    default_worker_name,
)
from tasks.dashboard import RunDashboard
from tasks.engines.hf_static import HFStaticEngine
from tasks.errors import UserError
from tasks.evaluation.metrics import evaluate_items, majority_score, pass_at_k
from tasks.export import SftFilters, preference_rows, sft_rows
from tasks.grading import grade
from tasks.progress import FleetProgress, TerminalProgress, describe
from tasks.store.models import Item, Result
from tasks.store.sqlite import SqliteStore
from tasks.throughput import BatchReport
from tasks.worker.chat import item_messages
from tests.conftest import ROOT, run_flow_cli

BYO = [  # question, reference answer, a response generated elsewhere
    ("Eggs left?", "#### 18", "16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18"),
    ("Total?", "#### 1,234", "Adding up: The answer is $1,234."),
    ("Share?", "#### 0.75", "So each gets \\boxed{\\frac{3}{4}}"),
    ("Apples?", "#### 5", "She has 7 apples.\n#### 7"),
]


@pytest.fixture
def byo_run(prefect_env, tmp_path: Path) -> str:
    path = tmp_path / "byo.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{n}", "question": q, "answer": a, "output": r}) + "\n"
                            for n, (q, a, r) in enumerate(BYO)))
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="byo", dataset=str(path), response_field="output"))
    return url


def answer_pending(url: str, response: str) -> int:
    """Stand in for a worker: answer every pending item with `response`, graded."""
    store = SqliteStore(Path(url.removeprefix("sqlite:///")))
    claim = store.claim("byo", "hand", 100, 60)
    graded = {i.id: grade(response, i.reference) for i in claim.items}
    return store.complete(claim, {id_: Result(response=response, predicted=g.predicted, correct=g.correct)
                                  for id_, g in graded.items()})


def evaluate_one(url: str, run: str = "byo", **settings) -> dict:
    return evaluate(EvaluateConfig(store=url, run=run, **settings))["runs"][0]


def test_bring_your_own_responses_are_graded_with_known_accuracy(byo_run: str, tmp_path: Path) -> None:
    metrics = evaluate_one(byo_run, json_path=str(tmp_path / "eval.json"))
    assert (metrics["total"], metrics["correct"], metrics["accuracy"]) == (4, 3, 0.75)
    assert metrics["stages"] == [{"stage": 0, "total": 4, "correct": 3, "accuracy": 0.75, "cumulative_correct": 3,
                                  "cumulative_accuracy": 0.75}]
    written = json.loads((tmp_path / "eval.json").read_text())
    assert {"run", "total", "correct", "accuracy", "stages"} <= set(written["runs"][0])
    assert written["runs"][0]["accuracy"] == 0.75 and written["table"][0]["accuracy"] == 0.75
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        latest = {artifact.key: artifact for artifact in client.read_latest_artifacts()
                  if artifact.key.endswith("-byo")}
    assert latest["accuracy-byo"].type == "table" and latest["stages-byo"].type == "table"
    rows = json.loads(latest["accuracy-byo"].data)
    assert rows[0] == {"figure": "accuracy at the first attempt", "value": "75.0% (3/4)"}
    assert {"figure": "made with", "value": "responses brought from elsewhere"} in rows


def refine_byo(url: str, max_rounds: int = 2) -> dict:
    return refine(RefineConfig(store=url, run="byo", max_rounds=max_rounds))


def test_refine_is_idempotent_and_stops_at_max_rounds(byo_run: str) -> None:
    first = refine_byo(byo_run)
    assert (first["queued"], first["by_stage"]) == (1, {1: 1})
    assert refine_byo(byo_run)["queued"] == 0
    store = SqliteStore(Path(byo_run.removeprefix("sqlite:///")))
    (retry,) = [i for i in store.items("byo") if i.stage == 1]
    assert (retry.question_id, retry.previous, retry.status) == ("q3", BYO[3][2], "pending")
    assert answer_pending(byo_run, "Still 6.\n#### 6") == 1
    assert refine_byo(byo_run)["by_stage"] == {2: 1}
    assert answer_pending(byo_run, "Oh, #### 5") == 1
    assert refine_byo(byo_run)["queued"] == 0  # right now; and round 2 was the last anyway
    metrics = evaluate_one(byo_run)
    assert [(s["stage"], s["total"], s["correct"], s["cumulative_correct"]) for s in metrics["stages"]] == [
        (0, 4, 3, 3), (1, 1, 0, 3), (2, 1, 1, 4)]
    assert metrics["stages"][-1]["cumulative_accuracy"] == 1.0 and metrics["accuracy"] == 0.75


def test_refine_stops_at_max_rounds_when_still_wrong(byo_run: str) -> None:
    assert refine_byo(byo_run, max_rounds=1)["queued"] == 1
    answer_pending(byo_run, "#### 6")
    assert refine_byo(byo_run, max_rounds=1)["queued"] == 0


def test_running_workers_answer_refine_items_as_a_multi_turn_chat(byo_run: str, tiny_model: Path) -> None:
    refine_byo(byo_run, max_rounds=1)
    store = SqliteStore(Path(byo_run.removeprefix("sqlite:///")))
    (retry,) = [i for i in store.items("byo") if i.stage == 1]
    messages = item_messages(retry, "step_by_step")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[1]["content"] == BYO[3][2]
    text = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu").prompt_text(messages)
    assert text.count("<s>user:") == 2 and "<s>assistant: She has 7 apples" in text
    generate(WorkerConfig(store=byo_run, run="byo", model={"model": str(tiny_model)}, devices="cpu", batch_size=4,
                          sampling={"max_new_tokens": 4}, lease_seconds=30))
    (retry,) = [i for i in store.items("byo") if i.stage == 1]
    assert retry.status == "done" and retry.result.tokens >= 1 and retry.result.prompt == "step_by_step+retry"


def k_sample_items() -> list[Item]:
    """2 questions x 4 samples; q1: 5, 5, 3, none (ref 5); q2: 7, 8, 8, 7 (ref 7): a tie."""
    rows = {"q1": ("5", ["5", "$5.00", "3", None]), "q2": ("7", ["7", "8", "8", "7"])}
    return [Item(question_id=q, question="question", reference=ref, sample=s, status="done",
                 result=Result(response=str(p), predicted=p, correct=p is not None and p.strip("$").startswith(ref)))
            for q, (ref, predictions) in rows.items() for s, p in enumerate(predictions)]


def test_maj_at_k_and_pass_at_k_on_a_hand_built_run() -> None:
    metrics = evaluate_items("k", k_sample_items())
    assert metrics["samples"] == 4 and metrics["accuracy"] == 1.0
    assert metrics["maj@4"] == pytest.approx((1.0 + 0.5) / 2)  # q1: 5 wins 2-1; q2: 7 and 8 tie, half credit
    assert metrics["pass@1"] == pytest.approx(0.5)
    assert metrics["pass@2"] == pytest.approx(1 - 1 / 6)
    assert metrics["pass@4"] == pytest.approx(1.0)
    assert metrics["no_answer_rate"] == pytest.approx(1 / 8)
    assert pass_at_k(5, 0, 2) == 0.0 and pass_at_k(5, 5, 2) == 1.0
    assert majority_score([(None, False)]) == 0.0


def test_throughput_per_worker_adds_up_its_devices() -> None:
    done = [Item(question_id=f"q{n}", question="q", reference="1", status="done",
                 result=Result(response="1", predicted="1", correct=True, tokens=10, seconds=0.5, worker="w",
                               device=f"cuda:{n % 2}"))
            for n in range(4)]
    metrics = evaluate_items("t", done)
    assert metrics["throughput"]["devices"]["w/cuda:0"] == {"items": 2, "tokens": 20, "tokens_per_second": 20.0}
    assert metrics["throughput"]["devices"]["w/cuda:1"]["tokens_per_second"] == 20.0
    # the two devices generate in parallel: 40 tokens/s together, not 40 tokens over 2 s of device time
    assert metrics["throughput"]["workers"]["w"] == {"items": 4, "tokens": 40, "tokens_per_second": 40.0}


def export_byo(url: str, out: Path, **settings) -> dict:
    return export(ExportConfig(store=url, run="byo", out=str(out), **settings))


def test_export_rows_and_sft(byo_run: str, tmp_path: Path) -> None:
    import datasets

    all_rows = tmp_path / "all.jsonl"
    assert export_byo(byo_run, all_rows)["rows"] == 4
    rows = [json.loads(line) for line in all_rows.read_text().splitlines()]
    assert set(rows[0]) == {"question_id", "sample", "stage", "question", "reference", "response", "predicted",
                            "correct", "tokens", "seed", "worker", "engine", "model", "prompt", "prompt_hash",
                            "sampling", "reasoning", "reasoning_complete", "thinking_forced"}
    assert export_byo(byo_run, tmp_path / "right.parquet", only_correct=True)["rows"] == 3
    assert len(datasets.Dataset.from_parquet(str(tmp_path / "right.parquet"))) == 3
    export_byo(byo_run, tmp_path / "sft", format="sft")
    sft = datasets.load_from_disk(str(tmp_path / "sft"))
    assert len(sft) == 3 and sft[0]["messages"][0]["role"] == "user" and sft[0]["messages"][1]["role"] == "assistant"


def test_export_of_one_stage(byo_run: str, tmp_path: Path) -> None:
    refine_byo(byo_run)
    answer_pending(byo_run, "Oh, #### 5")
    assert export_byo(byo_run, tmp_path / "all.jsonl")["rows"] == 5
    assert export_byo(byo_run, tmp_path / "first.jsonl", stage=0)["rows"] == 4
    assert export_byo(byo_run, tmp_path / "retries.jsonl", stage=1)["rows"] == 1
    (retry,) = [json.loads(line) for line in (tmp_path / "retries.jsonl").read_text().splitlines()]
    assert (retry["question_id"], retry["stage"], retry["response"], retry["correct"]) == ("q3", 1, "Oh, #### 5", True)


def test_sft_keeps_the_fewest_token_distinct_correct_responses() -> None:
    answers = [("a long answer: 4", True, 5), ("four, so #### 4", True, 3), ("four, so #### 4 ", True, 3),
               ("#### 5", False, 1)]
    items = [Item(question_id="q", question="question", reference="4", sample=s, status="done",
                  result=Result(response=r, correct=c, tokens=t)) for s, (r, c, t) in enumerate(answers)]
    assert [row["messages"][1]["content"] for row in sft_rows(items, per_question=1).rows] == ["four, so #### 4"]
    chosen = sft_rows(items, per_question=5)
    assert [row["messages"][1]["content"] for row in chosen.rows] == ["four, so #### 4", "a long answer: 4"]
    assert chosen.dropped == {"near-duplicate": 1}


def test_deployment_file_and_serve_script_schedule_refine() -> None:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["refine-schedule"]["entrypoint"] == "flows/refine.py:refine"
    assert deployments["refine-schedule"]["schedules"][0]["cron"] == "*/30 * * * *"
    assert {"worker", "evaluate-schedule"} <= set(deployments)
    configs = {"worker": WorkerConfig, "refine-schedule": RefineConfig, "evaluate-schedule": EvaluateConfig}
    for name, deployment in deployments.items():
        assert (ROOT / deployment["entrypoint"].split(":")[0]).is_file()
        configs[name].load(deployment["parameters"]["config"])  # every shipped setting is valid
    from deployments.serve import build_deployments

    refine_deployment, evaluate_deployment = build_deployments(ServeConfig(run="r"))
    assert refine_deployment.name == "refine-r" and refine_deployment.schedules[0].schedule.cron == "*/30 * * * *"
    assert RefineConfig.load(refine_deployment.parameters["config"]) == RefineConfig(run="r", max_rounds=2)


def test_fleet_progress_rate_and_eta() -> None:
    progress = FleetProgress(window_seconds=600)
    summary = {"total": 100, "done": 10, "failed": 0, "pending": 90, "running": 0}
    first = progress.update(summary, now=0.0)
    assert first["percent"] == 10.0 and first["eta_seconds"] is None
    later = progress.update({**summary, "done": 40, "pending": 50, "running": 10}, now=60.0)
    assert later["rate_per_minute"] == pytest.approx(30.0) and later["eta_seconds"] == pytest.approx(120.0)
    assert describe(later) == "40/100 items finished fleet-wide (40.0%), 30.0 items/min, ETA 0h02m"


def test_worker_publishes_fleet_progress_and_shows_it(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(SeedConfig(store=url, run="progress-run", limit=8))
    shown = logging.handlers.BufferingHandler(1000)  # beside the console handler ("fleetgen" does not propagate)
    logging.getLogger("fleetgen").addHandler(shown)
    try:
        generate(WorkerConfig(store=url, run="progress-run", model={"model": str(tiny_model)}, devices="cpu",
                              batch_size=4, sampling={"max_new_tokens": 2}, lease_seconds=30))
    finally:
        logging.getLogger("fleetgen").removeHandler(shown)
    with get_client(sync_client=True) as client:
        latest = {a.key: a for a in client.read_latest_artifacts() if a.key.endswith("-progress-run")}
    assert latest["progress-progress-run"].data == 100.0
    assert "8/8 items finished fleet-wide" in latest["progress-progress-run"].description
    table = latest["dashboard-progress-run"].data
    assert "| all | 8 | 0 | 0 | 8 | 0 | 0 |" in table
    assert re.search(rf"\| {default_worker_name()} \| cpu \| 8 \| \d+ \| \d+ \| ", table)
    lines = [record.getMessage() for record in shown.buffer if "items finished fleet-wide" in record.getMessage()]
    assert lines and "progress-run: 8 items finished fleet-wide (100.0%); this worker 8 done, 0 failed | cpu " \
        in lines[-1] and "tok/s | fleet ETA" in lines[-1], lines  # no terminal here: plain lines


def test_every_worker_of_a_run_updates_the_same_dashboard(prefect_env, tmp_path: Path) -> None:
    """One progress bar and one table per run, whichever worker writes: a second worker (say, after
    the first died) updates the first one's artifacts instead of making its own."""
    store = SqliteStore(tmp_path / "w.db")
    store.seed("dash", [Item(question_id=f"q{n}", question="?", reference="1") for n in range(4)])

    @flow
    def worker_writes_two(worker: str) -> None:
        claim = store.claim("dash", worker, 2, 60)
        store.complete(claim, {id_: Result(response="1", tokens=20, seconds=0.5, worker=worker, device="cpu",
                                           finished=time.time()) for id_ in claim.ids})
        RunDashboard(store, "dash", worker=worker).refresh()

    worker_writes_two("w1")
    worker_writes_two("w2")
    with get_client(sync_client=True) as client:
        versions = [a for a in client.read_artifacts() if a.key in ("progress-dash", "dashboard-dash")]
        latest = {a.key: a for a in client.read_latest_artifacts() if a.key in ("progress-dash", "dashboard-dash")}
    assert len(versions) == 2  # one of each, updated in place
    assert latest["progress-dash"].data == 100.0
    assert "4/4 items finished fleet-wide" in latest["progress-dash"].description
    table = latest["dashboard-dash"].data
    assert "by worker `w2`" in table and "| 0 | 4 | 0 | 0 | 4 | 0 | 0 |" in table
    assert "| w1 | cpu | 2 | 40 | 40 |" in table and "| w2 | cpu | 2 | 40 | 40 |" in table


def test_workers_that_created_the_dashboard_at_once_adopt_the_latest(prefect_env, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "w.db")
    store.seed("race", [Item(question_id="q0", question="?", reference="1")])
    first, second = RunDashboard(store, "race", worker="w1"), RunDashboard(store, "race", worker="w2")

    @flow
    def refresh(worker: str) -> None:
        {"w1": first, "w2": second}[worker].refresh()

    refresh("w1")
    second.refreshes = 1  # it looked before the first one created them: it creates its own, the latest
    refresh("w2")
    refresh("w1")  # the first one looks again after creating: it adopts the latest
    with get_client(sync_client=True) as client:
        latest = {a.key: a for a in client.read_latest_artifacts() if a.key == "dashboard-race"}
    assert first.ids == second.ids and "by worker `w1`" in latest["dashboard-race"].data


def test_a_terminal_gets_a_live_bar_with_the_fleet_and_this_worker(monkeypatch) -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    # a terminal 200 columns wide: tqdm before 4.68 takes the width of a file that has none from
    # COLUMNS (80 columns in some runs of the suite, which cut the bar's text)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LINES", "50")

    screen = Terminal()
    terminal = TerminalProgress("gsm8k-test", file=screen)
    terminal.fleet_figures({"finished": 100, "total": 1000, "eta_seconds": 5400.0, "percent": 10.0,
                            "rate_per_minute": 10.0})
    terminal.add(BatchReport(device="cuda:0", items=16, tokens=3200, seconds=4.0, done=15, failed=1))
    terminal.close()
    shown = screen.getvalue().split("\r")[-1]
    assert "116/1000" in shown and "this worker 15 done, 1 failed | cuda:0 800 tok/s | fleet ETA 1h30m" in shown


def test_evaluate_and_export_command_lines(byo_run: str, prefect_env, tmp_path: Path) -> None:
    store = ["--store", byo_run, "--run", "byo"]
    result = run_flow_cli("evaluate.py", *store, "--json", str(tmp_path / "m.json"), cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    assert "3/4 questions right at the first attempt = 75.0%" in result.stdout and (tmp_path / "m.png").exists()
    chats = run_flow_cli("export.py", *store, "--out", str(tmp_path / "x.jsonl"), "--format", "sft", cwd=tmp_path,
                         env=prefect_env)
    assert chats.returncode == 0 and "exported 3 SFT chats of run 'byo'" in chats.stdout, chats.stderr
    bad = run_flow_cli("export.py", *store, "--out", str(tmp_path / "x.csv"), cwd=tmp_path, env=prefect_env)
    assert bad.returncode == 2 and "cannot tell the format" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_flow_cli("refine.py", "--store", byo_run, "--run", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "Run 'nope' is not in the store" in missing.stderr


def test_every_flow_run_is_named_after_its_run_and_tagged_with_it(byo_run: str, prefect_env, tmp_path: Path) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    for script, extra in (("refine.py", []), ("evaluate.py", []), ("export.py", ["--out", str(tmp_path / "x.jsonl")])):
        result = run_flow_cli(script, "--store", byo_run, "--run", "byo", *extra, cwd=tmp_path, env=prefect_env)
        assert result.returncode == 0, result.stderr
    with get_client(sync_client=True) as client:
        tagged = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["run:byo"])))
        named = {(run.name, client.read_flow(run.flow_id).name) for run in tagged}
    assert {("byo", "refine"), ("byo", "evaluate"), ("byo", "export")} <= named, named


def test_push_to_hub_offline_is_a_clear_error(monkeypatch) -> None:
    from tasks.export import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Could not push to the hub as 'me/gsm8k-sft'.*HF_TOKEN"):
        push_to_hub([{"question_id": "q", "messages": []}], "me/gsm8k-sft")


def test_the_dataset_card_goes_to_the_hub_with_the_data(byo_run: str, tmp_path: Path, monkeypatch) -> None:
    """Pushed (the hub's side faked: no internet here): the data, then the card as the README's
    text, the metadata block `datasets` wrote there kept."""
    import datasets
    from huggingface_hub import DatasetCard

    hub: dict[str, str] = {}
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda data, repo: hub.update(
        {"rows": str(len(data)), "README.md": "---\nconfigs:\n- config_name: default\n---\n# generated by datasets\n"}))
    monkeypatch.setattr(DatasetCard, "load", classmethod(lambda cls, repo: cls(hub["README.md"])))
    monkeypatch.setattr(DatasetCard, "push_to_hub",
                        lambda card, repo, **options: hub.update({"README.md": card.content}))
    export_byo(byo_run, tmp_path / "sft.jsonl", format="sft", push_to_hub_repo="me/byo-sft")
    assert hub["rows"] == "3" and hub["README.md"].startswith("---\nconfigs:\n- config_name: default\n---\n")
    assert "# fleetgen export of run `byo`" in hub["README.md"] and "generated by datasets" not in hub["README.md"]
    assert hub["README.md"].endswith((tmp_path / "sft.card.md").read_text())


def real_solutions() -> list[tuple[str, str]]:
    """(question, solution) from the shipped GSM8K train split and MATH test split."""
    gsm8k = [json.loads(line) for line in (ROOT / "data/gsm8k/train.jsonl").read_text().splitlines()]
    math = [json.loads(line) for line in (ROOT / "data/math/test.jsonl").read_text().splitlines()]
    return [(row["question"], row["answer"]) for row in gsm8k] + [(row["problem"], row["solution"]) for row in math]


def test_sft_filters_keep_real_solutions_and_drop_broken_ones() -> None:
    solutions = real_solutions()
    kept = [SftFilters().reason_to_drop(solution) for _, solution in solutions]
    assert len(solutions) == 12_473
    assert kept.count(None) >= len(solutions) - 1  # one MATH diagram repeats a line 5 times
    question, solution = solutions[0]
    no_answer = solution.rsplit("####", 1)[0]
    looping = solution.replace("\n", "\n" + "Natalia sold 48/2 = 24 clips in May.\n" * 5, 1)
    assert SftFilters().reason_to_drop(no_answer) == "no final answer"
    assert SftFilters().reason_to_drop(looping) == "repeated lines"
    assert SftFilters(max_chars=50).reason_to_drop(solution) == "too long"
    near = solution.replace("Natalia", "Natalie", 1)
    items = [Item(question_id="q", question=question, reference="72", sample=n, status="done",
                  result=Result(response=text, correct=True, tokens=len(text))) for n, text in
             enumerate([solution, near, looping, no_answer])]
    chosen = sft_rows(items, per_question=4)
    assert [row["messages"][1]["content"] for row in chosen.rows] == [solution]
    assert chosen.dropped == {"near-duplicate": 1, "repeated lines": 1, "no final answer": 1}


def test_rows_are_shared_fairly_across_questions_and_dpo_pairs_a_right_and_a_wrong_answer() -> None:
    items = [Item(question_id=f"q{q}", question=f"question {q}", reference="1", sample=s, status="done",
                  result=Result(response=f"Answer {s} for q{q} with a different wording {'x' * s}\n#### 1",
                                correct=True, tokens=10 + s)) for q in range(3) for s in range(4)]
    spread = sft_rows(items, per_question=4, max_rows=7, filters=SftFilters(similarity=1.0)).rows
    assert Counter(row["question_id"] for row in spread) == {"q0": 3, "q1": 2, "q2": 2}
    items.append(Item(question_id="q0", question="question 0", reference="1", sample=9, status="done",
                      result=Result(response="It is 2.\n#### 2", correct=False, tokens=5)))
    (pair,) = preference_rows(items, per_question=2).rows  # q1 and q2 have no wrong answer to pair
    assert pair["prompt"] == [{"role": "user", "content": "question 0"}]
    assert pair["chosen"][0]["content"].startswith("Answer 0 for q0")
    assert pair["rejected"][0]["content"] == "It is 2.\n#### 2"


def test_sft_and_dpo_exports_write_a_dataset_card(byo_run: str, tmp_path: Path) -> None:
    assert export_byo(byo_run, tmp_path / "sft.jsonl", format="sft", max_chars=200)["rows"] == 3
    card = (tmp_path / "sft.card.md").read_text()
    assert "# fleetgen export of run `byo`" in card and "3 rows from 3 questions" in card
    assert "accuracy of the run at the first attempt: 75.0%" in card and "responses brought from elsewhere" in card
    with pytest.raises(UserError, match="Nothing to export"):  # each question has one answer: no pair
        export_byo(byo_run, tmp_path / "dpo.jsonl", format="dpo")
