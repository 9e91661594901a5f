"""A run's metrics for people: the text summary (also the Markdown artifact) and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_report(metrics: dict[str, Any]) -> str:
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
