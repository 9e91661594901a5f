"""Export a run's results: `python flows/export.py --run NAME --out PATH [--format rows|sft|dpo]`.

`.jsonl` and `.parquet` by extension, any other path a Hugging Face `datasets` folder
(`save_to_disk`); `--push-to-hub REPO` also uploads it. Rows hold question_id, sample, stage,
question, reference, response, predicted, correct, tokens, worker and how the answer was made
(engine, model, prompt, prompt_hash, sampling); `sft` writes chat messages (user question,
assistant response) of correct answers, the best (fewest tokens) per question, filtered (a stated
final answer, no looping lines, a length, no near-duplicates); refine rounds only with
--refine-conversations, as the conversation they answered; `dpo` pairs a correct and a wrong answer
of a question. sft and dpo write a dataset card beside the data, refuse a run seeded from a test
split (--allow-test-split), and leave out the questions a decontamination check found in a test
set (--decontaminate runs the n-gram check first; --keep-contaminated keeps them).
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import ExportConfig

    answer_early(ExportConfig, "flows/export.py", __doc__)


from contextlib import closing
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import run_from_command_line, run_name, start_flow
from tasks.cli import parse_command, run_cli
from tasks.config import DecontaminateConfig, ExportConfig
from tasks.decontamination import card_lines, check_run, refuse_a_test_split, without_contaminated
from tasks.errors import UserError
from tasks.evaluation.metrics import check_one_way_per_stage, evaluate_items
from tasks.export import (
    SftFilters,
    card_path,
    dataset_card,
    dropped_text,
    preference_rows,
    push_to_hub,
    result_rows,
    sft_rows,
    write_rows,
)
from tasks.store import open_store
from tasks.store.counts import summarize
from tasks.store.runs import require_run
from tasks.store.steps import read_items


@flow(name="export", flow_run_name=run_name, validate_parameters=False)
def export(config: ExportConfig) -> dict[str, Any]:
    """Write the run's results (rows or SFT chats); returns how many rows."""
    config = start_flow(ExportConfig, config)
    logger = get_run_logger()
    with closing(open_store(config.store)) as store:
        require_run(store, config.run)
        logger.info(f"reading run {config.run!r} ({summarize(store.counts(config.run))['total']:,} items) from "
                    f"{store.url}")
        items = read_items(store, config.run, texts_url=config.texts)
        if config.format != "rows":
            refuse_a_test_split(config.run, store.run_config(config.run), kind=config.format,
                                allowed=config.allow_test_split)
            if config.decontaminate:
                store.set_contamination(config.run, check_run(items, DecontaminateConfig(run=config.run)))
            contamination = store.contamination(config.run)
    card = None
    if config.format == "rows":  # each row says how its answer was made
        rows = result_rows(items, only_correct=config.only_correct, stage=config.stage)
    else:  # chats carry no provenance: never mix answers made different ways
        items, left_out, answered = without_contaminated(items, contamination, keep=config.keep_contaminated)
        if left_out:
            logger.info(f"left out {left_out:,} questions found in a test set ({answered:,} answers); "
                        "--keep-contaminated keeps them")
        way = check_one_way_per_stage(config.run, items)
        filters = SftFilters(max_chars=config.max_chars, max_repeated_lines=config.max_repeated_lines,
                             similarity=config.similarity)
        selection = (sft_rows(items, per_question=config.per_question, stage=config.stage, filters=filters,
                              refine_conversations=config.refine_conversations, max_rows=config.max_rows)
                     if config.format == "sft" else
                     preference_rows(items, per_question=config.per_question, filters=filters,
                                     max_rows=config.max_rows))
        rows = selection.rows
        card = dataset_card(run=config.run, kind=config.format, rows=len(rows), way=way, filters=filters,
                            questions=len({row["question_id"] for row in rows}), dropped=selection.dropped,
                            accuracy=evaluate_items(config.run, items)["accuracy"], per_question=config.per_question,
                            max_rows=config.max_rows, decontamination=card_lines(contamination, answered))
        if selection.dropped:
            logger.info(f"filters dropped {sum(selection.dropped.values())} answers: "
                        + dropped_text(selection.dropped))
    if not rows:
        raise UserError(f"Nothing to export from run {config.run!r} with these filters (no answered items match).")
    written = write_rows(rows, Path(config.out))
    if card is not None:
        card_path(Path(config.out)).write_text(card, encoding="utf-8")
    if config.push_to_hub_repo:
        push_to_hub(rows, config.push_to_hub_repo, card)
    logger.info(f"exported {counted(len(rows), config.format)} of run {config.run!r} to {config.out} ({written})")
    return {"run": config.run, "rows": len(rows), "out": config.out, "format": written, "kind": config.format}


def counted(rows: int, kind: str) -> str:
    """"1 row", "79 rows", "2 SFT chats", "5 DPO pairs"."""
    return f"{rows:,} {ROW_NAMES[kind]}{'' if rows == 1 else 's'}"


ROW_NAMES = {"rows": "row", "sft": "SFT chat", "dpo": "DPO pair"}


def main(argv: list[str] | None = None) -> None:
    result = run_from_command_line(export, parse_command(ExportConfig, argv, "flows/export.py", __doc__))
    print(f"exported {counted(result['rows'], result['kind'])} of run {result['run']!r} to {result['out']} "
          f"({result['format']})")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
