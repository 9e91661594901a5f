"""Queue refine rounds: `python flows/refine.py --run NAME [--max-rounds R]`.

For every question whose latest answer is wrong or missing, adds one item at the next stage,
asked as a multi-turn chat (the question, the previous response, the retry prompt). Idempotent:
running it again queues nothing new. Workers already running pick the new items up.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import RefineConfig

    answer_early(RefineConfig, "flows/refine.py", __doc__)


from collections import Counter
from contextlib import closing
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import run_from_command_line, run_name, start_flow
from tasks.cli import parse_command, run_cli
from tasks.config import RefineConfig
from tasks.refine import retry_items
from tasks.store import open_store
from tasks.store.runs import require_run
from tasks.store.steps import insert_items, read_items


@flow(name="refine", flow_run_name=run_name, validate_parameters=False)
def refine(config: RefineConfig = RefineConfig()) -> dict[str, Any]:
    """Add the next refine round's items; returns how many were queued per stage."""
    config = start_flow(RefineConfig, config)
    with closing(open_store(config.store)) as store:
        require_run(store, config.run)
        retries = retry_items(read_items(store, config.run, texts_url=config.texts), config.max_rounds)
        queued = insert_items(store, config.run, retries) if retries else 0
    by_stage = dict(sorted(Counter(item.stage for item in retries).items()))
    get_run_logger().info(f"run {config.run!r}: {queued} retries queued (by stage: {by_stage or 'none'}), "
                          f"max {config.max_rounds} rounds")
    return {"run": config.run, "queued": queued, "by_stage": by_stage}


def main(argv: list[str] | None = None) -> None:
    result = run_from_command_line(refine, parse_command(RefineConfig, argv, "flows/refine.py", __doc__))
    print(f"run {result['run']!r}: {result['queued']} retries queued")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
