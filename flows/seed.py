"""Seed a run with work items: `python flows/seed.py --run NAME --dataset gsm8k --split test`."""

from __future__ import annotations

import argparse
from contextlib import closing
from datetime import timedelta
from typing import Any

from flows.common import retry_unless_user_error, reveal
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import SecretStr

from tasks.cli import DEFAULT_RUN, UserError, command_parser, positive_int, run_cli
from tasks.data import Source, build_items, load_rows, resolve_source
from tasks.store import Item, Store, check_store, open_store


def _load_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    fields = [parameters[name] for name in ("question_field", "answer_field", "response_field", "limit")]
    return f"load-{parameters['source'].fingerprint()}-{fields}"


@task(cache_key_fn=_load_cache_key, cache_expiration=timedelta(days=30), persist_result=True,
      retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def load_dataset(source: Source, question_field: str, answer_field: str, response_field: str | None,
                 limit: int | None) -> list[dict[str, str]]:
    """Parse and validate the dataset (cached on the file's content)."""
    return load_rows(source, question_field, answer_field, response_field, limit)


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)
def insert_items(store: Store, run: str, items: list[Item]) -> int:
    """Insert the items not stored yet (idempotent, so a retry never duplicates)."""
    return store.seed(run, items)


@flow(name="seed")
def seed(store: SecretStr | None = None, run: str = DEFAULT_RUN, dataset: str = "gsm8k", split: str = "test",
         limit: int | None = None, samples: int = 1, question_field: str = "question",
         answer_field: str = "answer", response_field: str | None = None) -> dict[str, Any]:
    """Load a dataset and add its questions to a run; seeding again adds nothing."""
    logger = get_run_logger()
    source = resolve_source(dataset, split)
    rows = load_dataset(source, question_field, answer_field, response_field, limit)
    items = build_items(rows, samples)
    with closing(open_store(reveal(store))) as work:
        work.ensure_run(run, {"dataset": dataset, "split": split, "limit": limit, "samples": samples,
                              "question_field": question_field, "answer_field": answer_field,
                              "response_field": response_field})
        inserted = insert_items(work, run, items)
    logger.info(f"run {run!r}: {inserted} new items, {len(items) - inserted} already there ({len(rows)} questions)")
    return {"run": run, "questions": len(rows), "items": len(items), "inserted": inserted}


def parser() -> argparse.ArgumentParser:
    p = command_parser("flows/seed.py", __doc__)
    p.add_argument("--dataset", default="gsm8k",
                   help="gsm8k (the shipped copy), a JSONL file path, or a hub id owner/name[:config] (default: gsm8k)")
    p.add_argument("--split", default="test", help="split to load: train|test for gsm8k and hub ids (default: test)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N rows")
    p.add_argument("--samples", type=positive_int, default=1, metavar="K", help="items per question (default: 1)")
    p.add_argument("--question-field", default="question", metavar="F", help="field holding the question (default: question)")
    p.add_argument("--answer-field", default="answer", metavar="F",
                   help="field holding the reference; text after '####' is taken when present (default: answer)")
    p.add_argument("--response-field", metavar="F",
                   help="field holding a response generated elsewhere: items are stored done with it, to be graded")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.response_field and args.samples != 1:
        raise UserError("--samples cannot be combined with --response-field: each row's response is one sample "
                        "(rows sharing an 'id' become successive samples).")
    resolve_source(args.dataset, args.split)  # fail fast, before Prefect starts
    check_store(args.store)  # fail fast, before Prefect starts
    result = seed(args.store, args.run, args.dataset, args.split, args.limit, args.samples,
                  args.question_field, args.answer_field, args.response_field)
    print(f"seeded run {result['run']!r}: {result['inserted']} new items, "
          f"{result['items'] - result['inserted']} already there, {result['questions']} questions")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
