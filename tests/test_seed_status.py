"""The seed flow and status command, in-process under the Prefect test harness and as real
command lines (bad input: clear message, exit code 2, no traceback, stored data untouched)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.seed import seed
from tasks.config import SeedConfig
from tasks.status import format_table, run_status
from tasks.store.models import Result
from tasks.store.sqlite import SqliteStore
from tests.conftest import run_flow_cli


def status_json(cwd: Path, *args: str) -> dict:
    result = run_flow_cli("status.py", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_seed_flow_is_idempotent_and_caches_parsing(prefect_env, tmp_path: Path) -> None:
    # A dataset file of this test's own, so no other test's run can have cached its parsing.
    dataset = tmp_path / "own.jsonl"
    dataset.write_text("".join(f'{{"question": "q{n}", "answer": "#### {n}"}}\n' for n in range(20)))
    config = SeedConfig(store=f"sqlite:///{tmp_path / 'w.db'}", run="r", dataset=str(dataset), samples=2)
    first, again = seed(config, return_state=True), seed(config, return_state=True)
    counts = [state.result()["runs"]["r"] for state in (first, again)]
    assert (counts[0]["inserted"], counts[1]["inserted"], counts[1]["items"]) == (40, 0, 40)
    store = SqliteStore(tmp_path / "w.db")
    assert store.runs() == ["r"] and len(store.items("r")) == 40
    states = {}
    with get_client(sync_client=True) as client:
        for run in (first, again):
            flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[run.state_details.flow_run_id]))
            states[run] = [task.state.name for task in client.read_task_runs(flow_run_filter=flow_runs)
                           if task.name.startswith("load_dataset")]
    assert states[first] == ["Completed"] and states[again] == ["Cached"]


def test_status_counts_and_table(prefect_env, tmp_path: Path) -> None:
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'w.db'}", run="r", split="train", limit=5))
    store = SqliteStore(tmp_path / "w.db")
    claim = store.claim("r", "host-1", 2, 60)
    store.complete(claim, {claim.ids[0]: Result(response="18")})
    status = run_status(store, "r")
    assert {k: status[k] for k in ("total", "pending", "running", "done", "failed")} == {
        "total": 5, "pending": 3, "running": 1, "done": 1, "failed": 0}
    table = format_table(status)
    assert "run r: 20.0% done" in table and "worker host-1" in table and "stage 0" in table


def test_seed_and_status_command_lines(prefect_env, tmp_path: Path) -> None:
    result = run_flow_cli("seed.py", "--run", "cli", "--limit", "1200", "--samples", "2", cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    assert "seeded run 'cli': 2400 new items" in result.stdout
    assert f"store: sqlite:///{tmp_path / 'fleetgen.db'}" in result.stderr
    assert "seeding run cli: 2,000/2,400 items" in result.stderr
    assert "seeding run cli: 2,400/2,400 items" in result.stderr
    status = status_json(tmp_path, "--run", "cli")
    assert {k: status[k] for k in ("total", "pending", "running", "done", "failed")} == {
        "total": 2400, "pending": 2400, "running": 0, "done": 0, "failed": 0}
    readable = run_flow_cli("status.py", "--run", "cli", cwd=tmp_path)
    assert "run cli: 0.0% done" in readable.stdout
    result = run_flow_cli("seed.py", "--run", "hard", "--limit", "3", "--max-samples", "4", "--until-correct", "1",
                          cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    status = status_json(tmp_path, "--run", "hard")
    # one sample of each question at a time
    assert (status["total"], status["pending"], status["waiting"]) == (12, 3, 9)


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "1"}\n{broken\n', "Line 2 of .* is not valid JSON"),
    ('{"question": "q", "answer": "1"}\n{"question": "q"}\n', "Row 2 of .* has no 'answer' field"),
    ("", "holds no rows"),
])
def test_bad_dataset_files_fail_cleanly_and_keep_stored_data(prefect_env, tmp_path: Path, content, message) -> None:
    assert run_flow_cli("seed.py", "--run", "keep", "--limit", "3", cwd=tmp_path, env=prefect_env).returncode == 0
    (tmp_path / "bad.jsonl").write_text(content)
    result = run_flow_cli("seed.py", "--run", "keep", "--dataset", "bad.jsonl", cwd=tmp_path, env=prefect_env)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert status_json(tmp_path, "--run", "keep")["pending"] == 3


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nowhere.jsonl"], "Dataset 'nowhere.jsonl' cannot be read"),
    (["--store", "redis://localhost/0"], "store (--store): unknown store URL 'redis://localhost/0'"),
    (["--split", "dev"], "gsm8k has the split(s) train, test, not 'dev'"),
    (["--response-field", "out", "--samples", "2"], "--samples cannot be combined"),
    (["--max-samples", "1", "--until-correct", "1"], "give --max-samples K (more than 1)"),
    (["--limit", "0"], "limit (--limit) = '0': Input should be greater than 0"),
])
def test_bad_arguments_fail_before_prefect_starts(tmp_path: Path, args, message) -> None:
    result = run_flow_cli("seed.py", *args, cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and "Starting temporary server" not in result.stderr


def test_unreachable_mongodb_fails_fast_without_leaking_the_password(tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55"
    for script in ("seed.py", "status.py"):
        started = time.monotonic()
        result = run_flow_cli(script, cwd=tmp_path, env={"MONGODB_URI": f"mongodb://alice:{secret}@127.0.0.1:9/fleet"})
        assert time.monotonic() - started < 20
        assert result.returncode == 2
        assert "Cannot reach MongoDB at mongodb://alice:***@127.0.0.1:9/fleet" in result.stderr
        assert secret not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_unknown_run_lists_the_runs_there(prefect_env, tmp_path: Path) -> None:
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="present", limit=1))
    result = run_flow_cli("status.py", "--run", "absent", cwd=tmp_path)
    assert result.returncode == 2 and "Run 'absent' is not in the store" in result.stderr and "present" in result.stderr


def test_status_without_a_run_lists_every_run(prefect_env, tmp_path: Path) -> None:
    empty = run_flow_cli("status.py", cwd=tmp_path)
    assert empty.returncode == 0 and "no runs in this store yet" in empty.stdout
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    seed(SeedConfig(store=url, run="first", limit=3))
    seed(SeedConfig(store=url, run="second-run", limit=2, samples=2))
    store = SqliteStore(tmp_path / "fleetgen.db")
    claim = store.claim("first", "w", 1, 60)
    store.complete(claim, {claim.ids[0]: Result(response="#### 1")})
    table = run_flow_cli("status.py", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["run", "total", "pending", "running", "done", "failed", "expired", "%", "done"]
    assert lines[1].split() == ["first", "3", "2", "0", "1", "0", "0", "33.3%"]
    assert lines[2].split() == ["second-run", "4", "4", "0", "0", "0", "0", "0.0%"]
    listed = status_json(tmp_path)
    totals = [(run["run"], run["total"], run["done"]) for run in listed["runs"]]
    assert totals == [("first", 3, 1), ("second-run", 4, 0)]
