"""The worker's Prefect tasks: load an engine (with retries), and per device a loop whose store
calls (write what finished + claim the next batch; never cached, since a cached claim would hand
one batch out twice) show as a task run about once a minute (`writes.py`), never one per batch."""

from __future__ import annotations

import math
from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import WorkerConfig
from tasks.engines import Engine, create_engine
from tasks.engines.budget import BudgetEngine
from tasks.engines.code_loop import CodeLoopEngine
from tasks.errors import retry_unless_user_error
from tasks.sandbox import SandboxPolicy
from tasks.store import Store
from tasks.throughput import BatchReport
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import work_on_run
from tasks.worker.shards import ShardWriter
from tasks.worker.shutdown import Shutdown
from tasks.worker.writes import StoreCalls


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def load_engine(config: WorkerConfig, *, device: str, label: str, longest_prompt: int = 0) -> Engine:
    """Load one engine copy on one device (or for one endpoint); with code execution, in the code
    loop; with a thinking budget, in budget forcing (around the code loop). A started server's
    context holds `longest_prompt` tokens of prompt (at least 2,048) and the longest answer."""
    engine = create_engine(engine=config.engine, model=config.model, device=device, label=label,
                           batch_size=config.batch_size, context_tokens=config.sampling.context_tokens(longest_prompt))
    if config.code_execution:
        policy = SandboxPolicy(wall_seconds=config.code_timeout, cpu_seconds=max(1, math.ceil(config.code_timeout)),
                               required=config.required_sandbox_layers)
        engine = CodeLoopEngine(engine, max_executions=config.max_code_executions, policy=policy)
    if config.sampling.thinking_budget:
        engine = BudgetEngine(engine, thinking_budget=config.sampling.thinking_budget,
                              answer_budget=config.sampling.answer_budget)
    return engine


@task(cache_policy=NO_CACHE)
def run_device(store: Store, engine: Engine, config: WorkerConfig, keeper: LeaseKeeper, shutdown: Shutdown,
               idle_exit: float, on_report: Callable[[BatchReport], None] = lambda report: None,
               shards: ShardWriter | None = None) -> list[BatchReport]:
    """One device's loop, in its own thread, until the run has nothing pending or running (and
    `idle_exit` seconds more), or the worker stops. Its store calls show in Prefect as task runs
    about once a minute (`writes.py`). `on_report` sees each batch written (with --texts: staged
    for the worker's next shard)."""
    calls = StoreCalls(store=store, config=config, engine=engine, task_runs=True, on_report=on_report, shards=shards)
    return work_on_run(store=store, engine=engine, config=config, keeper=keeper, shutdown=shutdown,
                       idle_exit=idle_exit, calls=calls, shards=shards)
