"""Metrics for people: a run's text summary, a suite's table (one row per run, then MATH by level
and subject), and a PNG chart of either."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def reported_ks(metrics: dict[str, Any]) -> list[int]:
    """The k of every pass@k and maj@k the metrics hold."""
    return sorted(int(key[4:]) for key in metrics if key.startswith("maj@"))


def _samples_note(metrics: dict[str, Any]) -> str | None:
    """Said whenever questions have different numbers of answered samples."""
    if metrics.get("samples", 1) == metrics.get("samples_min", 1):
        return None
    top = metrics["samples"]
    return (f"(questions have {metrics['samples_min']} to {top} answered samples: each k uses the questions with at "
            f"least k, e.g. {metrics[f'questions@{top}']} of {metrics['total']} for k = {top})")


def format_report(metrics: dict[str, Any]) -> str:
    lines = [f"run {metrics['run']}: {metrics['correct']}/{metrics['total']} questions right at the first attempt "
             f"= {metrics['accuracy']:.1%}"]
    if metrics["unfinished"]:
        lines.append(f"(not finished: {metrics['unfinished']} answers still pending or running count as wrong)")
    for stage in metrics["stages"]:
        lines.append(f"stage {stage['stage']}: {stage['correct']}/{stage['total']} right ({stage['accuracy']:.1%}), "
                     f"cumulative {stage['cumulative_correct']}/{metrics['total']} = "
                     f"{stage['cumulative_accuracy']:.1%}")
    if metrics.get("samples", 1) > 1:
        lines.append(", ".join(f"pass@{k} {metrics[f'pass@{k}']:.1%}, maj@{k} {metrics[f'maj@{k}']:.1%}"
                               for k in reported_ks(metrics)))
        if note := _samples_note(metrics):
            lines.append(note)
    for field, table in metrics["by"].items():
        lines.append(f"by {field}: " + ", ".join(f"{value} {row['correct']}/{row['questions']} ({row['accuracy']:.0%})"
                                                 for value, row in table.items()))
    lines.append(f"no answer in {metrics['no_answer_rate']:.1%} of responses; items: "
                 + ", ".join(f"{status} {count}" for status, count in metrics["counts"].items()))
    lines += [text for _, text in optional_rows(metrics)]
    if metrics["made_with"]:
        lines.append("made with " + ", ".join(f"{key} {value}" for key, value in metrics["made_with"].items()))
    for name, figures in metrics["throughput"]["devices"].items():
        lines.append(f"{name}: {figures['items']} items, {figures['tokens_per_second']} tokens/s")
    return "\n".join(lines)


def optional_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, text) of what only some runs have: code execution, an LLM judge, several samples."""
    rows = []
    if metrics.get("code"):
        rows.append(("code execution", code_text(metrics["code"])))
    if metrics.get("reasoning"):
        rows.append(("reasoning traces", reasoning_text(metrics["reasoning"])))
    if metrics.get("judge"):
        rows.append(("with the LLM judge", judge_text(metrics)))
    if metrics.get("sampling"):
        rows.append(("samples", sampling_text(metrics["sampling"])))
    return rows


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def code_text(code: dict[str, Any]) -> str:
    return (f"code execution: {share(code['used_code'])} of {code['answers']} answers ran code, "
            f"{code['executions_per_answer']:.2f} executions per answer, {share(code['error_rate'])} of them failed; "
            f"accuracy {share(code['accuracy_with_code'])} with code, {share(code['accuracy_without_code'])} without")


def reasoning_text(reasoning: dict[str, Any]) -> str:
    def tokens(spread: dict[str, float] | None) -> str:
        return "-" if spread is None else f"median {spread['median']:g}, p90 {spread['p90']:g}"

    text = (f"reasoning traces: {share(reasoning['complete'])} of {reasoning['answers']} ended by the model; tokens in "
            f"the trace {tokens(reasoning['reasoning_tokens'])}, in the answer {tokens(reasoning['answer_tokens'])}; "
            f"accuracy {share(reasoning['accuracy_complete'])} with ended traces only; "
            f"{share(reasoning['no_answer_cut_off'])} of answers have none because their trace was cut off")
    if reasoning["forced"]:
        text += (f"; {share(reasoning['forced'])} closed at the thinking budget, accuracy "
                 f"{share(reasoning['accuracy_forced'])} forced, {share(reasoning['accuracy_not_forced'])} not")
    return text


def sampling_text(sampling: dict[str, Any]) -> str:
    spread = ", ".join(f"{right} right: {questions}" for right, questions in sampling["correct_counts"].items())
    return (f"samples: {len(sampling['hard'])} hard questions (no correct answer); questions by correct answers: "
            f"{spread}; {sampling['samples_made']} samples made, {sampling['cancelled']} cancelled; "
            f"{sampling['tokens_per_question']:.0f} tokens per question")


def judge_text(metrics: dict[str, Any]) -> str:
    judge = metrics["judge"]
    return (f"with the LLM judge ({', '.join(judge['models'])}) on the {judge['judged']} answers the rules could not "
            f"read: {judge['judged_correct']} more right, {judge['accuracy_with_judge']:.1%} at the first attempt "
            f"(the rules alone: {metrics['accuracy']:.1%})")


def model_text(metrics: dict[str, Any]) -> str:
    """The model that answered, with its loading settings ("responses brought from elsewhere" when none)."""
    way = metrics["made_with"]
    if not way:
        return "responses brought from elsewhere"
    model = way["model"]
    extras = ", ".join(f"{key} {value}" for key, value in model.items()
                       if key != "model" and value not in (None, "none", False))
    return f"model {model['model']}{f' ({extras})' if extras else ''}"


def made_with_text(metrics: dict[str, Any]) -> str:
    """Model, engine, prompt and sampling in a few words."""
    way = metrics["made_with"]
    if not way:
        return model_text(metrics)
    sampling = ", ".join(f"{key} {value}" for key, value in (way.get("sampling") or {}).items() if value is not None)
    return f"{model_text(metrics)} with {way['engine']}, prompt {way['prompt']}, sampling: {sampling}"


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """A run's figures as rows {figure, value}: the evaluate artifact's table."""
    rows = [("accuracy at the first attempt", f"{metrics['accuracy']:.1%} ({metrics['correct']}/{metrics['total']})")]
    rows += [(f"stage {stage['stage']}", f"{stage['accuracy']:.1%} right ({stage['correct']}/{stage['total']}), "
              f"cumulative {stage['cumulative_accuracy']:.1%}") for stage in metrics["stages"]]
    rows += [(name, f"{metrics[name]:.1%}") for k in reported_ks(metrics) for name in (f"pass@{k}", f"maj@{k}")]
    rows += [(f"by {field}: {value}", f"{row['accuracy']:.1%} ({row['correct']}/{row['questions']})")
             for field, table in metrics["by"].items() for value, row in table.items()]
    rows += [("no answer", f"{metrics['no_answer_rate']:.1%} of responses"),
             ("items", ", ".join(f"{status} {count}" for status, count in metrics["counts"].items())),
             ("made with", made_with_text(metrics))]
    rows += optional_rows(metrics)
    rows += [(f"throughput {name}", f"{figures['items']} items, {figures['tokens_per_second']} tokens/s")
             for name, figures in metrics["throughput"]["devices"].items()]
    if metrics["unfinished"]:
        rows.append(("not finished", f"{metrics['unfinished']} answers still pending or running (counted as wrong)"))
    return [{"figure": figure, "value": value} for figure, value in rows]


def suite_rows(suite: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: questions, accuracy at the first attempt, pass@k and maj@k for every k,
    no-answer rate (the table artifact's rows, and the text table's)."""
    ks = sorted({k for metrics in suite for k in reported_ks(metrics)})
    rows = []
    for metrics in suite:
        row = {"run": metrics["run"], "questions": metrics["total"], "accuracy": round(metrics["accuracy"], 4)}
        for k in ks:
            for name in (f"pass@{k}", f"maj@{k}"):
                row[name] = round(metrics[name], 4) if name in metrics else None
        rows.append({**row, "no answer": round(metrics["no_answer_rate"], 4)})
    return rows


def format_suite(suite: list[dict[str, Any]]) -> str:
    rows = suite_rows(suite)
    columns = list(rows[0])
    width = max(len(str(row["run"])) for row in rows) + 2

    def cell(value: Any) -> str:
        return "—" if value is None else f"{value:.1%}" if isinstance(value, float) else str(value)

    lines = [f"{'run':<{width}}" + "".join(f"{column:>11}" for column in columns[1:])]
    lines += [f"{row['run']:<{width}}" + "".join(f"{cell(row[c]):>11}" for c in columns[1:]) for row in rows]
    for metrics in suite:
        if note := _samples_note(metrics):
            lines.append(f"{metrics['run']}: {note}")
        for field, table in metrics["by"].items():
            lines.append(f"{metrics['run']} by {field}: " + ", ".join(
                f"{value} {row['accuracy']:.1%} ({row['questions']})" for value, row in table.items()))
    return "\n".join(lines)


def save_chart(suite: list[dict[str, Any]], path: Path) -> None:
    """One PNG: accuracy, pass@1 and maj@K per run (with refine stages for a single run), and
    MATH-style breakdowns by level and subject where a run has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    broken_down = [(metrics["run"], field, table) for metrics in suite for field, table in metrics["by"].items()]
    figure, axes = plt.subplots(1, 1 + len(broken_down), figsize=(6 + 5 * len(broken_down), 4.5), squeeze=False)
    overview = axes[0][0]
    names = [f"{metrics['run']}\n(n={metrics['total']})" for metrics in suite]
    series = {"accuracy": [m["accuracy"] for m in suite], "pass@1": [m.get("pass@1", m["accuracy"]) for m in suite],
              "maj@K": [m.get(f"maj@{m.get('samples', 1)}", m["accuracy"]) for m in suite]}
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        bars = overview.bar([i + offset * width for i in range(len(names))], values, width, label=label)
        overview.bar_label(bars, labels=[f"{value:.0%}" for value in values], fontsize=7)
    overview.set_xticks([i + width for i in range(len(names))], names, rotation=20, ha="right")
    overview.set(title="accuracy by run", ylim=(0, 1.1))
    overview.legend(loc="upper right", fontsize=7)
    for axis, (run, field, table) in zip(axes[0][1:], broken_down):
        bars = axis.bar([f"{value}\n(n={row['questions']})" for value, row in table.items()],
                        [row["accuracy"] for row in table.values()])
        axis.bar_label(bars, labels=[f"{row['accuracy']:.0%}" for row in table.values()], fontsize=7)
        axis.set(title=f"{run} by {field}", ylim=(0, 1.1))
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    models = sorted({model_text(metrics) for metrics in suite})
    figure.suptitle("; ".join(models), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
