"""The evaluate flow's Prefect task: publish a run's metrics as artifacts, and as JSON + PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.evaluation.report import format_report, save_chart
from tasks.progress import artifact_key


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_metrics(metrics: dict[str, Any], json_path: str | None) -> None:
    """Artifacts `accuracy-<run>` (Markdown) and `stages-<run>` (table); with `json_path` the
    metrics as JSON there and a PNG chart beside it."""
    run, key = metrics["run"], artifact_key(metrics["run"])
    create_markdown_artifact(key=f"accuracy-{key}", markdown="```\n" + format_report(metrics) + "\n```",
                             description=f"fleetgen evaluation of run {run}")
    create_table_artifact(key=f"stages-{key}", table=metrics["stages"], description=f"accuracy by stage, run {run}")
    if json_path:
        path = Path(json_path)
        path.write_text(json.dumps(metrics, indent=2))
        save_chart(metrics, path.with_suffix(".png"))
