"""A run's texts kept in shards (`--texts`): `python flows/texts.py --run NAME [--drop-orphans]`.

Shows where the run's answers' texts are, how many shards and bytes, and the orphan rows: rows
of answers the store refused (a worker killed after writing its shard but before its store
write, or a lease taken over meanwhile), which no reader ever follows. `--drop-orphans` rewrites
the shards holding them without them (a shard left empty is deleted), leaving shards younger
than `--older-than` alone. A plain command, like status: no Prefect server.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from typing import Any

from tasks.cli import parse_command, run_cli
from tasks.config import TextsConfig
from tasks.errors import UserError
from tasks.store import open_store
from tasks.store.runs import require_run
from tasks.texts import drop_orphans, orphans, run_texts


def main(argv: list[str] | None = None) -> None:
    config = parse_command(TextsConfig, argv, "flows/texts.py", __doc__)
    with closing(open_store(config.store)) as store:
        require_run(store, config.run)
        location = run_texts(store, config.run, config.texts)
        if location is None:
            raise UserError(f"Run {config.run!r} keeps its answers' texts in the store (no worker wrote it with "
                            "--texts): there are no shards to show.")
        kept = {(item.id, item.token or ""): item.result.texts["shard"] for item in store.items(config.run, texts=False)
                if item.status == "done" and item.result and item.result.texts}
    shards = location.shards(config.run)
    stray = orphans(location, config.run, kept, older_than=config.older_than)
    report: dict[str, Any] = {"run": config.run, "texts": location.url, "shards": len(shards),
                              "bytes": sum(shards.values()), "answers": len(kept),
                              "orphan_rows": sum(rows for rows, _ in stray.values()), "shards_with_orphans": len(stray)}
    if config.drop_orphans:
        report["dropped_rows"], report["shards_rewritten"] = drop_orphans(location, stray, kept)
    logging.getLogger("fleetgen").info(f"texts of run {config.run!r}: {location.url}")
    if config.json_output:
        print(json.dumps(report))
        return
    print(f"run {config.run!r}: {report['answers']} answers' texts in {report['shards']} shards "
          f"({report['bytes'] / 2**20:,.2f} MB) at {location.url}; {report['orphan_rows']} orphan rows in "
          f"{report['shards_with_orphans']} shards older than {config.older_than:g} s"
          + (f"; dropped {report['dropped_rows']} from {report['shards_rewritten']} shards"
             if config.drop_orphans else ""))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
