"""The evaluate flow's Prefect task: publish metrics as artifacts, and as JSON + PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.dashboard import artifact_key
from tasks.evaluation.report import made_with_text, save_chart, suite_rows, summary_rows


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_metrics(suite: list[dict[str, Any]], json_path: str | None) -> None:
    """One run: the tables `accuracy-<run>` (every figure, and how the answers were made) and
    `stages-<run>`. Several: the table `suite-<first run>` (one row per run). With `json_path`
    everything as JSON there ({"runs": [metrics...], "table": [rows...]}) and a PNG chart beside it."""
    key = artifact_key(suite[0]["run"])
    if len(suite) == 1:
        metrics = suite[0]
        create_table_artifact(key=f"accuracy-{key}", table=summary_rows(metrics),
                              description=f"fleetgen evaluation of run {metrics['run']}: {made_with_text(metrics)}")
        create_table_artifact(key=f"stages-{key}", table=metrics["stages"],
                              description=f"accuracy by stage, run {metrics['run']}")
    else:
        names = ", ".join(metrics["run"] for metrics in suite)
        ways = "; ".join(sorted({made_with_text(metrics) for metrics in suite}))
        create_table_artifact(key=f"suite-{key}", table=suite_rows(suite),
                              description=f"fleetgen evaluation of {names}: {ways}")
    if json_path:
        path = Path(json_path)
        path.write_text(json.dumps({"runs": suite, "table": suite_rows(suite)}, indent=2))
        save_chart(suite, path.with_suffix(".png"))
