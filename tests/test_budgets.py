"""What a run costs the free tiers, counted where it happens: Prefect events at the session's
real Prefect server, Prefect API requests at the client's HTTP layer, MongoDB round trips at the
collections (mongomock). 1,000 items through the real worker flow, answered by a scripted engine
(the engine does not change the traffic)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import httpx
from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

import flows.generate
from bench.standins import mongomock_store
from bench.store import OperationCounter
from flows.generate import generate
from tasks.config import WorkerConfig
from tasks.dashboard import RunDashboard
from tasks.store.models import Item
from tasks.store.mongo import MongoStore
from tasks.worker import steps
from tasks.worker.writes import StoreCalls
from tests.support import ScriptedEngine, SerializedStore, settled_events_since

ITEMS, BATCH = 1000, 32


def count_http(monkeypatch) -> Counter[str]:
    """Every HTTP request the Prefect client sends, by path."""
    requests: Counter[str] = Counter()
    for client in (PrefectHttpxAsyncClient, PrefectHttpxSyncClient):
        send = client.send

        if client is PrefectHttpxAsyncClient:
            async def counted(self, request, *args, _send=send, **kwargs):
                requests[request.url.path.split("/api/")[-1]] += 1
                return await _send(self, request, *args, **kwargs)
        else:
            def counted(self, request, *args, _send=send, **kwargs):
                requests[request.url.path.split("/api/")[-1]] += 1
                return _send(self, request, *args, **kwargs)
        monkeypatch.setattr(client, "send", counted)
    return requests


def test_a_run_of_1000_items_stays_within_the_free_tier_budgets(prefect_env, monkeypatch) -> None:
    store = mongomock_store()
    store.seed("budget", [Item(question_id=f"q{n}", question=f"Question {n}", reference="7") for n in range(ITEMS)])
    store.ensure_run("budget", {"samples": 1})
    counter = OperationCounter(store._items)
    store._items = counter
    monkeypatch.setattr(MongoStore, "connect", classmethod(lambda cls, url, **options: SerializedStore(store)))
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: ScriptedEngine({"": "#### 7"}, batch_size=BATCH))
    requests = count_http(monkeypatch)
    since = datetime.now(timezone.utc)

    generate(WorkerConfig(store="mongodb://budget.example/fleet", run="budget", batch_size=BATCH, devices="cpu"))

    APILogWorker.drain_all()
    EventsWorker.drain_all()
    sent = Counter(requests)  # before this test's own queries below
    events = settled_events_since(since)
    per_thousand = {"events": sum(events.values()) * 1000 / ITEMS, "requests": sum(sent.values()) * 1000 / ITEMS}
    round_trips = sum(counter.calls.values()) * 32 / ITEMS
    assert {i.status for i in store.items("budget")} == {"done"}
    assert per_thousand["events"] <= 150, (per_thousand, events)
    assert per_thousand["requests"] <= 30, (per_thousand, sent)
    assert round_trips <= 4, (round_trips, counter.calls)
    print(f"per 1,000 items: {per_thousand['events']:.0f} Prefect events {dict(events)}, "
          f"{per_thousand['requests']:.0f} API requests {dict(sent)}; per 32 items {round_trips:.2f} MongoDB "
          f"round trips {dict(counter.calls)}")


def test_counting_sees_what_it_counts(prefect_env, monkeypatch) -> None:
    """The counters themselves: a flow of 3 task runs makes events and requests they see."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE)
    def step(n: int) -> int:
        return n

    @flow
    def three() -> Any:
        return [step(n) for n in range(3)]

    requests = count_http(monkeypatch)
    since = datetime.now(timezone.utc)
    three()
    EventsWorker.drain_all()
    events = settled_events_since(since, until=lambda events: events["prefect.task-run.Completed"] >= 3)  # a cold
    assert events["prefect.task-run.Completed"] >= 3 and requests["flow_runs/"] >= 1  # server writes them late


def test_a_prefect_outage_does_not_stop_the_work(prefect_env, monkeypatch) -> None:
    """The store is the source of truth, Prefect the dashboard: with every Prefect API request
    answered 503 (then 429) while the run is worked on, the worker keeps claiming, generating and
    writing at its usual pace and finishes; the outage is said once."""
    store = mongomock_store()
    store.seed("outage", [Item(question_id=f"q{n}", question=f"Question {n}", reference="7") for n in range(200)])
    store.ensure_run("outage", {"samples": 1})
    monkeypatch.setattr(MongoStore, "connect", classmethod(lambda cls, url, **options: SerializedStore(store)))
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: ScriptedEngine({"": "#### 7"}, batch_size=8))
    monkeypatch.setattr(RunDashboard, "REFRESH_SECONDS", 0.2)  # Prefect requests all along
    outage, refused = {"on": False}, Counter()
    write_and_claim = StoreCalls.write_and_claim

    def first_call_starts_the_outage(*args, **kwargs):
        outage["on"] = True
        return write_and_claim(*args, **kwargs)

    monkeypatch.setattr(StoreCalls, "write_and_claim", first_call_starts_the_outage)
    for client in (httpx.AsyncClient, httpx.Client):  # under Prefect's client, so its own retries run
        send = client.send

        def failing(request):
            refused[request.url.path.split("/api/")[-1]] += 1
            status = 503 if sum(refused.values()) % 2 else 429
            return httpx.Response(status, headers={"Retry-After": "5"}, request=request)

        if client is httpx.AsyncClient:
            async def maybe(self, request, *args, _send=send, **kwargs):
                if outage["on"] and "/api/" in request.url.path:
                    return failing(request)
                return await _send(self, request, *args, **kwargs)
        else:
            def maybe(self, request, *args, _send=send, **kwargs):
                if outage["on"] and "/api/" in request.url.path:
                    return failing(request)
                return _send(self, request, *args, **kwargs)
        monkeypatch.setattr(client, "send", maybe)

    summarize_reports = flows.generate.summarize_reports

    def outage_ends_when_the_work_is_done(*args):  # the flow's own end is reported again
        outage["on"] = False
        return summarize_reports(*args)

    monkeypatch.setattr(flows.generate, "summarize_reports", outage_ends_when_the_work_is_done)
    started = time.monotonic()
    generate(WorkerConfig(store="mongodb://outage.example/fleet", run="outage", batch_size=8, devices="cpu"))
    assert {i.status for i in store.items("outage")} == {"done"}
    assert sum(refused.values()) > 0, "the outage must meet some Prefect requests"
    assert time.monotonic() - started < 60, refused  # no stall behind Prefect's retries
    print(f"outage: {dict(refused)} refused, {time.monotonic() - started:.1f} s")
