"""The evaluate flow's Prefect task: publish metrics as artifacts, and as JSON + PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.evaluation.report import format_report, format_suite, save_chart, suite_rows
from tasks.progress import artifact_key


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_metrics(suite: list[dict[str, Any]], json_path: str | None) -> None:
    """One run: artifacts `accuracy-<run>` (Markdown) and `stages-<run>` (table). Several: the
    table `suite-<first run>` (one row per run) and its Markdown. With `json_path` everything as
    JSON there ({"runs": [metrics...], "table": [rows...]}) and a PNG chart beside it."""
    key = artifact_key(suite[0]["run"])
    if len(suite) == 1:
        create_markdown_artifact(key=f"accuracy-{key}", markdown="```\n" + format_report(suite[0]) + "\n```",
                                 description=f"fleetgen evaluation of run {suite[0]['run']}")
        create_table_artifact(key=f"stages-{key}", table=suite[0]["stages"],
                              description=f"accuracy by stage, run {suite[0]['run']}")
    else:
        names = ", ".join(metrics["run"] for metrics in suite)
        create_table_artifact(key=f"suite-{key}", table=suite_rows(suite), description=f"fleetgen evaluation: {names}")
        create_markdown_artifact(key=f"suite-report-{key}", markdown="```\n" + format_suite(suite) + "\n```",
                                 description=f"fleetgen evaluation: {names}")
    if json_path:
        path = Path(json_path)
        path.write_text(json.dumps({"runs": suite, "table": suite_rows(suite)}, indent=2))
        save_chart(suite, path.with_suffix(".png"))
