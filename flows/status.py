"""Show a run's progress: `python flows/status.py --run NAME [--json]`.

Counts items by status (pending, running, done, failed; `expired` = running under a lease that
ran out, i.e. a worker that died) overall, per stage and per worker. A plain read: it starts no
Prefect server, so it answers in about a second.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from typing import Any

from tasks.cli import command_parser, run_cli
from tasks.store import STATUSES, Store, open_store, require_run, summarize

COLUMNS = ("total", *STATUSES, "expired")


def run_status(store: Store, run: str) -> dict[str, Any]:
    """The run's summary; UserError naming the runs there are when `run` is unknown."""
    require_run(store, run)
    return {"run": run, **summarize(store.counts(run))}


def format_table(status: dict[str, Any]) -> str:
    """A readable table: one line overall, one per stage, one per worker."""
    lines = [("", *COLUMNS), ("all", *(status[c] for c in COLUMNS))]
    lines += [(f"stage {stage}", *(counts[c] for c in COLUMNS)) for stage, counts in status["stages"].items()]
    lines += [(f"worker {name}", *(counts[c] for c in COLUMNS)) for name, counts in status["workers"].items()]
    width = max(len(str(line[0])) for line in lines)
    done = status["done"] / status["total"] if status["total"] else 0.0
    table = [f"{line[0]:<{width}}" + "".join(f"{value:>9}" for value in line[1:]) for line in lines]
    return "\n".join([f"run {status['run']}: {done:.1%} done", *table])


def main(argv: list[str] | None = None) -> int:
    p = command_parser("flows/status.py", __doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object (last line of stdout)")
    args = p.parse_args(argv)
    with closing(open_store(args.store)) as store:
        logging.getLogger("fleetgen").info(f"store: {store.url}")
        status = run_status(store, args.run)
    print(json.dumps(status) if args.json else format_table(status))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
