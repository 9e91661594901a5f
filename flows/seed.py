"""Seed a run with work items: `python flows/seed.py --run NAME --dataset gsm8k --split test`."""

from __future__ import annotations

from contextlib import closing
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import run_from_command_line, start_flow
from tasks.benchmarks import build_items, resolve_source
from tasks.benchmarks.steps import load_dataset
from tasks.cli import parse_command, run_cli
from tasks.config import SeedConfig
from tasks.store import open_store
from tasks.store.steps import insert_items


@flow(name="seed", validate_parameters=False)
def seed(config: SeedConfig = SeedConfig()) -> dict[str, Any]:
    """Load a dataset and add its questions to a run; seeding again adds nothing."""
    config = start_flow(SeedConfig, config)
    rows = load_dataset(resolve_source(config.dataset, config.split), question_field=config.question_field,
                        answer_field=config.answer_field, response_field=config.response_field, limit=config.limit)
    items = build_items(rows, config.samples)
    with closing(open_store(config.store)) as store:
        store.ensure_run(config.run, config.model_dump(exclude={"store", "run"}))
        inserted = insert_items(store, config.run, items)
    get_run_logger().info(f"run {config.run!r}: {inserted} new items, {len(items) - inserted} already there "
                          f"({len(rows)} questions)")
    return {"run": config.run, "questions": len(rows), "items": len(items), "inserted": inserted}


def main(argv: list[str] | None = None) -> None:
    config = parse_command(SeedConfig, argv, "flows/seed.py", __doc__)
    resolve_source(config.dataset, config.split)  # fail fast, before Prefect starts
    result = run_from_command_line(seed, config, known_run=False)
    print(f"seeded run {result['run']!r}: {result['inserted']} new items, "
          f"{result['items'] - result['inserted']} already there, {result['questions']} questions")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
