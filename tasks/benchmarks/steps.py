"""The seed flow's Prefect task: parse a dataset once (cached on the file's content)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import task

from tasks.benchmarks import Row, load_rows
from tasks.benchmarks.files import Source
from tasks.errors import retry_unless_user_error


def _cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    fields = [parameters[name] for name in ("question_field", "answer_field", "response_field", "limit")]
    return f"load-{parameters['source'].fingerprint()}-{fields}"


@task(cache_key_fn=_cache_key, cache_expiration=timedelta(days=30), persist_result=True,
      retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def load_dataset(source: Source, *, question_field: str, answer_field: str, response_field: str | None,
                 limit: int | None) -> list[Row]:
    """Parse and validate the dataset."""
    return load_rows(source, question_field=question_field, answer_field=answer_field,
                     response_field=response_field, limit=limit)
