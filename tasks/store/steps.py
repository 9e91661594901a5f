"""The store's Prefect tasks, shared by the flows: insert items (seed, refine) and read a run."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import UserError, retry_unless_user_error
from tasks.store import Store
from tasks.store.models import Item
from tasks.texts import run_texts


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)
def insert_items(store: Store, run: str, items: list[Item]) -> int:
    """Insert the items not stored yet (idempotent, so a retry never duplicates)."""
    return store.seed(run, items)


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)
def read_items(store: Store, run: str, texts: bool = True, texts_url: str | None = None) -> list[Item]:
    """Every item of the run, with or without its long texts (never cached: the store changes all
    the time); texts kept in shards are read from them, each shard once (from `texts_url` when
    given, else where the run's workers wrote them)."""
    items = store.items(run, texts=texts)
    if texts and any(item.result and item.result.texts for item in items):
        location = run_texts(store, run, texts_url)
        if location is None:
            raise UserError(f"Answers of run {run!r} keep their texts in shards, but the store does not say where: "
                            "give --texts with the URL its workers wrote them to.")
        location.fill(items, run)
    return items

