"""Seed runs with work items: `python flows/seed.py --run NAME --dataset gsm8k --split test`.

One dataset as one run, or with `--suite` every benchmark of a suite as runs of their own
(`<run-prefix>-<benchmark>`) that workers drain one after another (`--run 'PREFIX-*'`).
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import SeedConfig

    answer_early(SeedConfig, "flows/seed.py", __doc__)


from contextlib import closing
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import run_from_command_line, run_name, start_flow
from tasks.benchmarks import build_items, resolve_source, take_subset
from tasks.benchmarks.steps import load_dataset
from tasks.cli import parse_command, run_cli
from tasks.config import SeedConfig
from tasks.progress import in_chunks
from tasks.store import open_store
from tasks.store.steps import insert_items

SEED_CHUNK = 2000  # items per insert (a task run each): progress to see, few round trips


@flow(name="seed", flow_run_name=run_name, validate_parameters=False)
def seed(config: SeedConfig = SeedConfig()) -> dict[str, Any]:
    """Load the datasets (all of them before anything is written) and add their questions to
    their runs; seeding again adds nothing."""
    config = start_flow(SeedConfig, config)
    sources = [(run, resolve_source(dataset, config.split, config.data_dir)) for run, dataset in config.planned_runs()]
    loaded = [(run, source, load_dataset(source, question_field=config.question_field,
                                         answer_field=config.answer_field, response_field=config.response_field,
                                         limit=config.limit))
              for run, source in sources]
    runs = {}
    with closing(open_store(config.store)) as store:
        for run, source, rows in loaded:
            if config.subset:
                rows = take_subset(rows, config.subset, source.benchmark)
            items = build_items(rows, config.samples, solutions=config.solutions, until_correct=config.until_correct)
            store.ensure_run(run, {**config.model_dump(exclude={"store", "run", "suite", "run_prefix"}),
                                   "dataset": source.benchmark or source.where})
            inserted = sum(insert_items(store, run, list(chunk))
                           for chunk in in_chunks(items, size=SEED_CHUNK, what=f"seeding run {run}"))
            get_run_logger().info(f"run {run!r}: {inserted} new items, {len(items) - inserted} already there "
                                  f"({len(rows)} questions)")
            runs[run] = {"questions": len(rows), "items": len(items), "inserted": inserted}
    return {"runs": runs}


def main(argv: list[str] | None = None) -> None:
    config = parse_command(SeedConfig, argv, "flows/seed.py", __doc__)
    for _, dataset in config.planned_runs():  # fail fast, before Prefect starts and before anything is written
        resolve_source(dataset, config.split, config.data_dir)
    tags = tuple(f"run:{run}" for run, _ in config.planned_runs())
    result = run_from_command_line(seed, config, runs=None, tags=tags)
    for run, counts in result["runs"].items():
        print(f"seeded run {run!r}: {counts['inserted']} new items, {counts['items'] - counts['inserted']} already "
              f"there, {counts['questions']} questions")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
