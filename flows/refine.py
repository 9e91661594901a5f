"""Queue refine rounds: `python flows/refine.py --run NAME [--max-rounds R]`.

For every question whose latest answer is wrong or missing, adds one item at the next stage,
asked as a multi-turn chat (the question, the previous response, the retry prompt). Idempotent:
running it again queues nothing new. Workers already running pick the new items up.
"""

from __future__ import annotations

from collections import Counter
from contextlib import closing
from typing import Any

from flows.common import reveal
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import SecretStr

from flows.seed import insert_items
from tasks.cli import DEFAULT_RUN, command_parser, run_cli
from tasks.refine import retry_items
from tasks.store import Item, Store, check_store, open_store, require_run


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def read_items(store: Store, run: str) -> list[Item]:
    """Every item of the run (never cached: the store changes all the time)."""
    return store.items(run)


@flow(name="refine")
def refine(store: SecretStr | None = None, run: str = DEFAULT_RUN, max_rounds: int = 2) -> dict[str, Any]:
    """Add the next refine round's items; returns how many were queued per stage."""
    with closing(open_store(reveal(store))) as work:
        require_run(work, run)
        retries = retry_items(read_items(work, run), max_rounds)
        queued = insert_items(work, run, retries) if retries else 0
    by_stage = dict(sorted(Counter(item.stage for item in retries).items()))
    get_run_logger().info(f"run {run!r}: {queued} retries queued (by stage: {by_stage or 'none'}), max {max_rounds} rounds")
    return {"run": run, "queued": queued, "by_stage": by_stage}


def main(argv: list[str] | None = None) -> int:
    p = command_parser("flows/refine.py", __doc__)
    p.add_argument("--max-rounds", type=int, default=2, metavar="R",
                   help="refine rounds at most: stages 1..R after the first attempt (default: 2)")
    args = p.parse_args(argv)
    check_store(args.store, args.run)
    result = refine(args.store, args.run, args.max_rounds)
    print(f"run {result['run']!r}: {result['queued']} retries queued")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
