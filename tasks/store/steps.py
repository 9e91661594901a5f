"""The store's Prefect tasks, shared by the flows: insert items (seed, refine) and read a run."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import retry_unless_user_error
from tasks.store import Store
from tasks.store.models import Item


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE, retry_condition_fn=retry_unless_user_error)
def insert_items(store: Store, run: str, items: list[Item]) -> int:
    """Insert the items not stored yet (idempotent, so a retry never duplicates)."""
    return store.seed(run, items)


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def read_items(store: Store, run: str, texts: bool = True) -> list[Item]:
    """Every item of the run, with or without its long texts (never cached: the store changes all the time)."""
    return store.items(run, texts=texts)
