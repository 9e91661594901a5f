"""Report accuracy: `python flows/evaluate.py --run NAME` or `--runs 'suite-*'` [--json PATH].

Accuracy at the first attempt and cumulatively after each refine round; with K samples per
question pass@k and maj@k for k = 1, 2, 4, ..., K; MATH by level and subject; the no-answer rate;
how the answers were made; throughput per worker and device. Several runs make one table, one
row per run. Publishes Prefect artifacts; with --json also writes the JSON and a PNG chart.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import EvaluateConfig

    answer_early(EvaluateConfig, "flows/evaluate.py", __doc__)


from contextlib import closing
from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import run_from_command_line, run_name, start_flow
from tasks.cli import parse_command, run_cli
from tasks.config import EvaluateConfig
from tasks.evaluation.metrics import evaluate_items
from tasks.evaluation.report import format_report, format_suite, suite_rows
from tasks.evaluation.steps import publish_metrics
from tasks.store import open_store
from tasks.store.runs import match_runs
from tasks.store.steps import read_items


@flow(name="evaluate", flow_run_name=run_name, validate_parameters=False)
def evaluate(config: EvaluateConfig = EvaluateConfig()) -> dict[str, Any]:
    """Compute the metrics of one run, or of several (`runs`) as one table, and publish them;
    returns {"runs": [metrics...], "table": [one row per run]}."""
    config = start_flow(EvaluateConfig, config)
    with closing(open_store(config.store)) as store:
        runs = match_runs(store, config.runs or config.run)
        suite = [evaluate_items(run, read_items(store, run, texts=False)) for run in runs]
    publish_metrics(suite, config.json_path)
    return {"runs": suite, "table": suite_rows(suite)}


def main(argv: list[str] | None = None) -> None:
    config = parse_command(EvaluateConfig, argv, "flows/evaluate.py", __doc__)
    result = run_from_command_line(evaluate, config, runs=config.runs or config.run)
    suite = result["runs"]
    print(format_report(suite[0]) if len(suite) == 1 else format_suite(suite))
    if config.json_path:
        print(f"wrote {config.json_path} and {Path(config.json_path).with_suffix('.png')}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
