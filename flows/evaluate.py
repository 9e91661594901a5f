"""Report a run's accuracy: `python flows/evaluate.py --run NAME [--json PATH]`.

Accuracy at the first attempt and cumulatively after each refine round; with K samples per
question maj@K and pass@k; the no-answer rate; throughput per worker and device; counts by
status. Publishes Prefect artifacts; with --json also writes the JSON and a PNG chart beside it.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from flows.common import reveal
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import SecretStr

from flows.refine import read_items
from tasks.cli import DEFAULT_RUN, UserError, command_parser, run_cli
from tasks.metrics import evaluate_items
from tasks.store import artifact_key, check_store, open_store, require_run


def format_report(metrics: dict[str, Any]) -> str:
    """The readable summary (also the Markdown artifact)."""
    lines = [f"run {metrics['run']}: {metrics['correct']}/{metrics['total']} questions right at the first attempt "
             f"= {metrics['accuracy']:.1%}"]
    if metrics["unfinished"]:
        lines.append(f"(not finished: {metrics['unfinished']} answers still pending or running count as wrong)")
    for stage in metrics["stages"]:
        lines.append(f"stage {stage['stage']}: {stage['correct']}/{stage['total']} right ({stage['accuracy']:.1%}), "
                     f"cumulative {stage['cumulative_correct']}/{metrics['total']} = {stage['cumulative_accuracy']:.1%}")
    scores = {key: value for key, value in metrics.items() if key.startswith(("maj@", "pass@"))}
    if scores:
        lines.append(", ".join(f"{key} {value:.1%}" for key, value in scores.items()))
    lines.append(f"no answer in {metrics['no_answer_rate']:.1%} of responses; items: "
                 + ", ".join(f"{status} {count}" for status, count in metrics["counts"].items()))
    for name, figures in metrics["throughput"]["devices"].items():
        lines.append(f"{name}: {figures['items']} items, {figures['tokens_per_second']} tokens/s")
    return "\n".join(lines)


def save_chart(metrics: dict[str, Any], path: Path) -> None:
    """Accuracy by stage (and cumulative), and tokens/s by worker, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, speed) = plt.subplots(1, 2, figsize=(10, 4))
    stages = [str(stage["stage"]) for stage in metrics["stages"]]
    accuracy.bar(stages, [stage["accuracy"] for stage in metrics["stages"]], label="accuracy at the stage")
    accuracy.plot(stages, [stage["cumulative_accuracy"] for stage in metrics["stages"]], "o-", color="black",
                  label="cumulative")
    accuracy.set(title=f"{metrics['run']}: accuracy by stage", xlabel="stage (0 = first attempt)", ylim=(0, 1))
    accuracy.legend()
    workers = metrics["throughput"]["workers"]
    speed.barh(list(workers) or ["(no generated items)"], [w["tokens_per_second"] for w in workers.values()] or [0])
    speed.set(title="throughput by worker", xlabel="tokens/s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@flow(name="evaluate")
def evaluate(store: SecretStr | None = None, run: str = DEFAULT_RUN, json_path: str | None = None) -> dict[str, Any]:
    """Compute the run's metrics, publish them as artifacts, and write JSON + PNG when asked."""
    with closing(open_store(reveal(store))) as work:
        require_run(work, run)
        metrics = evaluate_items(run, read_items(work, run))
    key = artifact_key(run)
    create_markdown_artifact(key=f"accuracy-{key}", markdown="```\n" + format_report(metrics) + "\n```",
                             description=f"fleetgen evaluation of run {run}")
    create_table_artifact(key=f"stages-{key}", table=metrics["stages"], description=f"accuracy by stage, run {run}")
    if json_path:
        path = Path(json_path)
        path.write_text(json.dumps(metrics, indent=2))
        save_chart(metrics, path.with_suffix(".png"))
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = command_parser("flows/evaluate.py", __doc__)
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON here, and a PNG chart beside it")
    args = p.parse_args(argv)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"Cannot write {args.json}: its folder does not exist.")
    check_store(args.store, args.run)
    metrics = evaluate(args.store, args.run, args.json)
    print(format_report(metrics))
    if args.json:
        print(f"wrote {args.json} and {Path(args.json).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
