"""Show the runs' progress: `python flows/status.py [--run NAME] [--json]`.

Counts items by status (pending, running, done, failed; `expired` = running under a lease that
ran out, i.e. a worker that died): without --run a line per run, with it one run overall, per
stage and per worker; the store's size as the Atlas free tier counts it (warning as it nears
512 MB) and, apart, the size of the texts kept in shards (`--texts`). A
plain read: it starts no Prefect server, so it answers in about a second (the one command here
that is not a Prefect flow; its tables are `tasks/status.py`).
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from typing import Any

from tasks.cli import parse_command, run_cli
from tasks.config import StatusConfig
from tasks.status import all_runs, format_table, run_status, runs_table, sizes_lines, texts_sizes
from tasks.store import open_store
from tasks.store.quota import quota_warning


def main(argv: list[str] | None = None) -> None:
    config = parse_command(StatusConfig, argv, "flows/status.py", __doc__)
    log = logging.getLogger("fleetgen")
    with closing(open_store(config.store)) as store:
        log.info(f"store: {store.url}")
        status: dict[str, Any] = run_status(store, config.run) if config.run else {"runs": all_runs(store)}
        storage = status["storage"] = store.storage()
        runs = [config.run] if config.run else [row["run"] for row in status["runs"]]
        texts = status["texts"] = texts_sizes(store, runs, config.texts)
    if warning := quota_warning(storage):
        log.warning(warning)
    if config.json_output:
        print(json.dumps(status))
    else:
        print("\n".join([format_table(status) if config.run else runs_table(status["runs"]),
                         *sizes_lines(storage, texts)]))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
