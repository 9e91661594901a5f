"""Export a run's results: `python flows/export.py --run NAME --out PATH [--format rows|sft]`.

`.jsonl` and `.parquet` by extension, any other path a Hugging Face `datasets` folder
(`save_to_disk`); `--push-to-hub REPO` also uploads it. Rows hold question_id, sample, stage,
question, reference, response, predicted, correct, worker and model; `sft` writes chat messages
(user question, assistant response) of correct answers, the best (fewest tokens) per question.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

from flows.common import reveal
from prefect import flow
from prefect.logging import get_run_logger
from pydantic import SecretStr

from flows.refine import read_items
from tasks.cli import DEFAULT_RUN, UserError, command_parser, positive_int, run_cli
from tasks.export import push_to_hub, result_rows, sft_rows, write_rows
from tasks.store import check_store, open_store, require_run


@flow(name="export")
def export(out: str, store: SecretStr | None = None, run: str = DEFAULT_RUN, only_correct: bool = False,
           stage: int | None = None, format: str = "rows", per_question: int = 1,
           push_to_hub_repo: str | None = None) -> dict[str, Any]:
    """Write the run's results (rows or SFT chats) to `out`; returns how many rows."""
    with closing(open_store(reveal(store))) as work:
        require_run(work, run)
        items = read_items(work, run)
    rows = sft_rows(items, per_question, stage) if format == "sft" else result_rows(items, only_correct, stage)
    if not rows:
        raise UserError(f"Nothing to export from run {run!r} with these filters (no answered items match).")
    written = write_rows(rows, Path(out))
    if push_to_hub_repo:
        push_to_hub(rows, push_to_hub_repo)
    get_run_logger().info(f"exported {len(rows)} {format} rows of run {run!r} to {out} ({written})")
    return {"run": run, "rows": len(rows), "out": out, "format": written}


def main(argv: list[str] | None = None) -> int:
    p = command_parser("flows/export.py", __doc__)
    p.add_argument("--out", required=True, metavar="PATH", help="x.jsonl, x.parquet, or a folder for a HF datasets copy")
    p.add_argument("--only-correct", action="store_true", help="rows: only correct answers (sft always is)")
    p.add_argument("--stage", type=int, metavar="S", help="only this stage (0 = first attempt)")
    p.add_argument("--format", choices=("rows", "sft"), default="rows", help="rows (default) or sft chat messages")
    p.add_argument("--per-question", type=positive_int, default=1, metavar="N",
                   help="sft: up to N distinct correct responses per question, shortest first (default: 1)")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload to the Hugging Face hub as this dataset repo")
    args = p.parse_args(argv)
    if not Path(args.out).resolve().parent.is_dir():
        raise UserError(f"Cannot write {args.out}: its folder does not exist.")
    check_store(args.store, args.run)
    result = export(args.out, args.store, args.run, args.only_correct, args.stage, args.format, args.per_question,
                    args.push_to_hub)
    print(f"exported {result['rows']} rows of run {result['run']!r} to {result['out']} ({result['format']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
