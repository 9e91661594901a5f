"""Report a run's accuracy: `python flows/evaluate.py --run NAME [--json PATH]`.

Accuracy at the first attempt and cumulatively after each refine round; with K samples per
question maj@K and pass@k; the no-answer rate; throughput per worker and device; counts by
status. Publishes Prefect artifacts; with --json also writes the JSON and a PNG chart beside it.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import run_from_command_line, start_flow
from tasks.cli import parse_command, run_cli
from tasks.config import EvaluateConfig
from tasks.evaluation.metrics import evaluate_items
from tasks.evaluation.report import format_report
from tasks.evaluation.steps import publish_metrics
from tasks.store import open_store, require_run
from tasks.store.steps import read_items


@flow(name="evaluate", validate_parameters=False)
def evaluate(config: EvaluateConfig = EvaluateConfig()) -> dict[str, Any]:
    """Compute the run's metrics and publish them."""
    config = start_flow(EvaluateConfig, config)
    with closing(open_store(config.store)) as store:
        require_run(store, config.run)
        metrics = evaluate_items(config.run, read_items(store, config.run))
    publish_metrics(metrics, config.json_path)
    return metrics


def main(argv: list[str] | None = None) -> None:
    config = parse_command(EvaluateConfig, argv, "flows/evaluate.py", __doc__)
    metrics = run_from_command_line(evaluate, config)
    print(format_report(metrics))
    if config.json_path:
        print(f"wrote {config.json_path} and {Path(config.json_path).with_suffix('.png')}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
