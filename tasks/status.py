"""What `python flows/status.py` shows: a run's counts overall, per stage and per worker, or a
line per run, as tables."""

from __future__ import annotations

from typing import Any

from tasks.store import Store
from tasks.store.counts import count_columns, summarize
from tasks.store.models import SAMPLING_STATUSES
from tasks.store.runs import require_run
from tasks.texts import run_texts


def run_status(store: Store, run: str) -> dict[str, Any]:
    """The run's summary; UserError naming the runs there are when `run` is unknown."""
    require_run(store, run)
    return {"run": run, **summarize(store.counts(run))}


def done_share(summary: dict[str, Any]) -> float:
    """The share of a run's items done (cancelled samples count: they are never to be made)."""
    return (summary["done"] + summary.get("cancelled", 0)) / summary["total"] if summary["total"] else 0.0


def all_runs(store: Store) -> list[dict[str, Any]]:
    """Every run's totals, oldest first."""
    return [{"run": run, **summarize(store.counts(run))} for run in store.runs()]


def runs_table(runs: list[dict[str, Any]]) -> str:
    """One line per run: its counts and the share done."""
    if not runs:
        return "no runs in this store yet: seed one with python flows/seed.py"
    columns = count_columns({status: sum(run.get(status, 0) for run in runs) for status in SAMPLING_STATUSES})
    width = max(len(run["run"]) for run in runs)
    lines = [f"{'run':<{width}}" + "".join(f"{column:>10}" for column in columns) + f"{'% done':>10}"]
    for run in runs:
        lines.append(f"{run['run']:<{width}}" + "".join(f"{run.get(column, 0):>10}" for column in columns)
                     + f"{done_share(run):>10.1%}")
    return "\n".join(lines)


def format_table(status: dict[str, Any]) -> str:
    """A readable table: one line overall, one per stage, one per worker."""
    columns = count_columns(status)
    lines = [("", *columns), ("all", *(status.get(c, 0) for c in columns))]
    lines += [(f"stage {stage}", *(counts.get(c, 0) for c in columns)) for stage, counts in status["stages"].items()]
    lines += [(f"worker {name}", *(counts.get(c, 0) for c in columns)) for name, counts in status["workers"].items()]
    width = max(len(str(line[0])) for line in lines)
    table = [f"{line[0]:<{width}}" + "".join(f"{value:>9}" for value in line[1:]) for line in lines]
    return "\n".join([f"run {status['run']}: {done_share(status):.1%} done", *table])


def texts_sizes(store: Store, runs: list[str], texts_url: str | None = None) -> dict[str, dict[str, Any]]:
    """For each run keeping its answers' texts in shards: where, how many shards, how many bytes
    (apart from the store's own size: the shards are not in its quota)."""
    sizes = {}
    for run in runs:
        if location := run_texts(store, run, texts_url):
            shards = location.shards(run)
            sizes[run] = {"url": location.url, "shards": len(shards), "bytes": sum(shards.values())}
    return sizes


def sizes_lines(storage: dict[str, Any] | None, texts: dict[str, dict[str, Any]]) -> list[str]:
    """The store's size as its quota counts it, and the shards' apart."""
    lines = [f"store: {storage['bytes'] / 2**20:,.1f} MB, {storage['documents']:,} documents (data and indexes, as "
             f"the free tier's quota counts them: {storage['counted']})"] if storage else []
    lines += [f"texts of {run}: {size['bytes'] / 2**20:,.1f} MB in {size['shards']:,} shards at {size['url']} (not in "
              "the store's quota)" for run, size in texts.items()]
    return lines
