"""Bring-your-own grading, refine rounds, evaluation metrics, export, deployments, fleet progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client

from flows.evaluate import evaluate
from flows.export import export
from flows.generate import generate
from flows.refine import refine
from flows.seed import seed
from tasks.generation import LoadedModel, ModelSpec
from tasks.metrics import evaluate_items, majority_score, pass_at_k
from tasks.progress import FleetProgress, describe
from tasks.store import Item
from tasks.store_sqlite import SqliteStore
from tasks.worker import item_messages
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
    seed(url, "byo", str(path), response_field="output")
    return url


def answer_pending(url: str, response: str) -> int:
    """Stand in for a worker: answer every pending item with `response`, graded."""
    from tasks.answers import grade_response

    store = SqliteStore(Path(url.removeprefix("sqlite:///")))
    claim = store.claim("byo", "hand", 100, 60)
    return store.complete(claim, {i.id: {"response": response, **grade_response(response, i.reference)}
                                  for i in claim.items})


def test_bring_your_own_responses_are_graded_with_known_accuracy(byo_run: str, tmp_path: Path) -> None:
    metrics = evaluate(byo_run, "byo", str(tmp_path / "eval.json"))
    assert (metrics["total"], metrics["correct"], metrics["accuracy"]) == (4, 3, 0.75)
    assert metrics["stages"] == [{"stage": 0, "total": 4, "correct": 3, "accuracy": 0.75, "cumulative_correct": 3,
                                  "cumulative_accuracy": 0.75}]
    written = json.loads((tmp_path / "eval.json").read_text())
    assert {"run", "total", "correct", "accuracy", "stages"} <= set(written) and written["accuracy"] == 0.75
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        keys = {artifact.key for artifact in client.read_artifacts()}
    assert {"accuracy-byo", "stages-byo"} <= keys


def test_refine_is_idempotent_and_stops_at_max_rounds(byo_run: str) -> None:
    first = refine(byo_run, "byo", max_rounds=2)
    assert (first["queued"], first["by_stage"]) == (1, {1: 1})
    assert refine(byo_run, "byo", max_rounds=2)["queued"] == 0
    store = SqliteStore(Path(byo_run.removeprefix("sqlite:///")))
    (retry,) = [i for i in store.items("byo") if i.stage == 1]
    assert (retry.question_id, retry.previous, retry.status) == ("q3", BYO[3][2], "pending")
    assert answer_pending(byo_run, "Still 6.\n#### 6") == 1
    assert refine(byo_run, "byo", max_rounds=2)["by_stage"] == {2: 1}
    assert answer_pending(byo_run, "Oh, #### 5") == 1
    assert refine(byo_run, "byo", max_rounds=2)["queued"] == 0  # right now; and round 2 was the last anyway
    metrics = evaluate(byo_run, "byo")
    assert [(s["stage"], s["total"], s["correct"], s["cumulative_correct"]) for s in metrics["stages"]] == [
        (0, 4, 3, 3), (1, 1, 0, 3), (2, 1, 1, 4)]
    assert metrics["stages"][-1]["cumulative_accuracy"] == 1.0 and metrics["accuracy"] == 0.75


def test_refine_stops_at_max_rounds_when_still_wrong(byo_run: str) -> None:
    assert refine(byo_run, "byo", max_rounds=1)["queued"] == 1
    answer_pending(byo_run, "#### 6")
    assert refine(byo_run, "byo", max_rounds=1)["queued"] == 0


def test_running_workers_answer_refine_items_as_a_multi_turn_chat(byo_run: str, tiny_model: Path) -> None:
    refine(byo_run, "byo", max_rounds=1)
    store = SqliteStore(Path(byo_run.removeprefix("sqlite:///")))
    (retry,) = [i for i in store.items("byo") if i.stage == 1]
    messages = item_messages(retry, "step_by_step")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[1]["content"] == BYO[3][2]
    model = LoadedModel(ModelSpec(str(tiny_model)), "cpu")
    assert model.prompt_text(messages).count("<s>user:") == 2 and "<s>assistant: She has 7 apples" in model.prompt_text(messages)
    generate(byo_run, "byo", str(tiny_model), devices="cpu", batch_size=4, max_new_tokens=4, lease_seconds=30)
    (retry,) = [i for i in store.items("byo") if i.stage == 1]
    assert retry.status == "done" and retry.result["tokens"] >= 1


def k_sample_items() -> list[Item]:
    """2 questions x 4 samples; q1: 5, 5, 3, none (ref 5); q2: 7, 8, 8, 7 (ref 7): a tie."""
    rows = {"q1": ("5", ["5", "$5.00", "3", None]), "q2": ("7", ["7", "8", "8", "7"])}
    return [Item(q, "question", ref, sample=s, status="done",
                 result={"response": str(p), "predicted": p, "correct": p is not None and p.strip("$").startswith(ref)})
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


def test_throughput_per_worker_and_device() -> None:
    done = [Item(f"q{n}", "q", "1", status="done", result={"response": "1", "predicted": "1", "correct": True,
                                                           "tokens": 10, "seconds": 0.5, "worker": "w", "device": "cuda:0"})
            for n in range(4)]
    metrics = evaluate_items("t", done)
    assert metrics["throughput"]["workers"]["w"] == {"items": 4, "tokens": 40, "tokens_per_second": 20.0}
    assert metrics["throughput"]["devices"]["w/cuda:0"]["tokens_per_second"] == 20.0


def test_export_rows_and_sft(byo_run: str, tmp_path: Path) -> None:
    import datasets

    all_rows = tmp_path / "all.jsonl"
    assert export(str(all_rows), byo_run, "byo")["rows"] == 4
    rows = [json.loads(line) for line in all_rows.read_text().splitlines()]
    assert set(rows[0]) == {"question_id", "sample", "stage", "question", "reference", "response", "predicted",
                            "correct", "worker", "model"}
    assert export(str(tmp_path / "right.parquet"), byo_run, "byo", only_correct=True)["rows"] == 3
    assert len(datasets.Dataset.from_parquet(str(tmp_path / "right.parquet"))) == 3
    assert export(str(tmp_path / "stage1.jsonl"), byo_run, "byo", stage=0)["rows"] == 4
    export(str(tmp_path / "sft"), byo_run, "byo", format="sft")
    sft = datasets.load_from_disk(str(tmp_path / "sft"))
    assert len(sft) == 3 and sft[0]["messages"][0]["role"] == "user" and sft[0]["messages"][1]["role"] == "assistant"


def test_sft_keeps_the_shortest_distinct_correct_responses() -> None:
    from tasks.export import sft_rows

    items = [Item("q", "question", "4", sample=s, status="done", result={"response": r, "correct": c})
             for s, (r, c) in enumerate([("long answer: 4", True), ("4", True), ("4 ", True), ("5", False)])]
    assert [row["messages"][1]["content"] for row in sft_rows(items, per_question=1)] == ["4"]
    assert [row["messages"][1]["content"] for row in sft_rows(items, per_question=5)] == ["4", "long answer: 4"]


def test_deployment_file_and_serve_script_schedule_refine() -> None:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["refine-schedule"]["entrypoint"] == "flows/refine.py:refine"
    assert deployments["refine-schedule"]["schedules"][0]["cron"] == "*/30 * * * *"
    assert {"worker", "evaluate-schedule"} <= set(deployments)
    for deployment in deployments.values():
        assert (ROOT / deployment["entrypoint"].split(":")[0]).is_file()
    from deployments.serve import build_deployments

    refine_deployment, evaluate_deployment = build_deployments("r", 2, "*/30 * * * *", "15 * * * *", None)
    assert refine_deployment.name == "refine-r" and refine_deployment.schedules[0].schedule.cron == "*/30 * * * *"
    assert evaluate_deployment.parameters == {"run": "r", "json_path": None}


def test_fleet_progress_rate_and_eta() -> None:
    progress = FleetProgress(window_seconds=600)
    summary = {"total": 100, "done": 10, "failed": 0, "pending": 90, "running": 0}
    first = progress.update(summary, now=0.0)
    assert first["percent"] == 10.0 and first["eta_seconds"] is None
    later = progress.update({**summary, "done": 40, "pending": 50, "running": 10}, now=60.0)
    assert later["rate_per_minute"] == pytest.approx(30.0) and later["eta_seconds"] == pytest.approx(120.0)
    assert describe(later) == "40/100 items finished fleet-wide (40.0%), 30.0 items/min, ETA 0h02m"


def test_worker_publishes_fleet_progress(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    seed(url, "progress-run", "gsm8k", "test", limit=8)
    generate(url, "progress-run", str(tiny_model), devices="cpu", batch_size=4, max_new_tokens=2, lease_seconds=30)
    with get_client(sync_client=True) as client:
        progress = [a for a in client.read_artifacts() if a.key == "progress-progress-run"]
    assert progress and progress[-1].data == 100.0 and "8/8 items finished fleet-wide" in progress[-1].description


@pytest.mark.parametrize("script, flags", [
    ("refine.py", ["--store", "--run", "--max-rounds"]),
    ("evaluate.py", ["--store", "--run", "--json"]),
    ("export.py", ["--store", "--run", "--out", "--only-correct", "--stage", "--format", "--per-question", "--push-to-hub"]),
])
def test_help_documents_every_flag(tmp_path: Path, script: str, flags: list[str]) -> None:
    help_text = run_flow_cli(script, "--help", cwd=tmp_path).stdout
    for flag in flags:
        assert flag in help_text


def test_evaluate_and_export_command_lines(byo_run: str, prefect_env, tmp_path: Path) -> None:
    store = ["--store", byo_run, "--run", "byo"]
    result = run_flow_cli("evaluate.py", *store, "--json", str(tmp_path / "m.json"), cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    assert "3/4 questions right at the first attempt = 75.0%" in result.stdout and (tmp_path / "m.png").exists()
    bad = run_flow_cli("export.py", *store, "--out", str(tmp_path / "x.csv"), cwd=tmp_path, env=prefect_env)
    assert bad.returncode == 2 and "Cannot tell the format" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_flow_cli("refine.py", "--store", byo_run, "--run", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "Run 'nope' is not in the store" in missing.stderr


def test_push_to_hub_offline_is_a_clear_error(monkeypatch) -> None:
    from tasks.cli import UserError
    from tasks.export import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Could not push to the hub as 'me/gsm8k-sft'.*HF_TOKEN"):
        push_to_hub([{"question_id": "q", "messages": []}], "me/gsm8k-sft")
