"""The worker every machine of the fleet runs: `python flows/generate.py --model PATH_OR_HUB_ID`.

Loads one model copy per device, then each device loops claim -> generate -> grade -> complete
in its own thread until the run has nothing pending and nothing running. With no flags it runs
the default job: the embedded store, the run `gsm8k-test` (seeded from the shipped GSM8K test
split when empty) and a small instruct model from the hub.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # before the heavy imports below: --help and bad flags answer at once, and a stop
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # during them has nothing to clean up
    from tasks.cli import answer_early
    from tasks.config import WorkerConfig

    answer_early(WorkerConfig, "flows/generate.py", __doc__)

from contextlib import ExitStack, closing
from typing import Any, Sequence

from prefect import flow
from prefect.futures import wait
from prefect.logging import get_run_logger

from flows.common import config_values, run_from_command_line, run_name, start_flow
from flows.seed import seed
from tasks.cli import parse_command, run_cli
from tasks.config import DEFAULT_RUN, SeedConfig, WorkerConfig, default_worker_name
from tasks.dashboard import RunDashboard
from tasks.engines.devices import choose_engine, share_cores, worker_devices
from tasks.engines.openai_api import OpenAIEngine
from tasks.errors import UserError
from tasks.grading import symbolic
from tasks.progress import TerminalProgress
from tasks.sandbox import check_sandbox
from tasks.store import open_store
from tasks.store.runs import match_runs
from tasks.throughput import BatchReport, summarize_reports
from tasks.worker.chat import check_solutions, longest_prompt
from tasks.worker.leases import LeaseKeeper, checkpoint_plan
from tasks.worker.loop import run_finished, sampling_warnings
from tasks.worker.outbox import DeviceBroken
from tasks.worker.shards import shard_writer
from tasks.worker.shutdown import Shutdown
from tasks.worker.steps import load_engine, run_device


def _flow_run_name() -> str:
    """`<run> @ <worker>`."""
    return f"{run_name()} @ {config_values().get('worker') or default_worker_name()}"


@flow(name="generate", flow_run_name=_flow_run_name, validate_parameters=False)
def generate(config: WorkerConfig = WorkerConfig()) -> dict[str, Any]:
    """Work on a run until it has nothing pending and nothing running; returns throughput per device."""
    import transformers

    config = start_flow(WorkerConfig, config)
    logger = get_run_logger()
    engine, chosen = choose_engine(config.engine, devices=config.devices, static_only=config.extract == "llm")
    config = config.model_copy(update={"engine": engine})
    devices = worker_devices(config.engine, config.devices)
    reports: list[BatchReport] = []
    engines: list = []
    broken: dict[str, str] = {}  # device -> why it stopped
    shutdown = Shutdown(grace_seconds=config.grace_seconds, max_runtime=config.max_runtime)
    with (closing(open_store(config.store)) as store,
          LeaseKeeper(store, config.lease_seconds, config.checkpoint_seconds) as keeper,
          ExitStack() as texts,  # --texts: the shard writer, its last shard written before the claims go back
          shutdown.on_signals(keeper.give_back_all)):  # a stop while models load (minutes) ends it once loaded
        if config.run == DEFAULT_RUN and config.run not in store.runs():
            seed(SeedConfig(store=config.store, run=config.run))
        runs = match_runs(store, config.run)
        shards = texts.enter_context(shard_writer(store=store, keeper=keeper, config=config, runs=runs))
        for warning in sampling_warnings(store, runs, config.sampling):
            logger.warning(warning)
        check_solutions(store, runs, config.prompt)
        if not config.idle_exit and all(run_finished(store, run) for run in runs):  # before loading any model
            logger.info(f"nothing to do: run(s) {', '.join(runs)} have nothing pending or running")
            return worker_result(config, runs, [], nothing_to_do=True)
        if config.code_execution:
            logger.info(f"code execution: up to {config.max_code_executions} per item, {config.code_timeout:g} s "
                        f"each; {check_sandbox(config.required_sandbox_layers)}")
        if shared := share_cores(devices, config.cpu_threads):
            logger.info(shared)
        transformers.utils.logging.disable_progress_bar()  # one loading bar per copy garbles the others
        prompt = 0
        if config.engine.name == "vllm":  # the servers' context: the run's longest prompt and the longest answer
            prompt = longest_prompt(store, runs, model=config.model.model, template=config.prompt,
                                    thinking=config.sampling.thinking)
            logger.info(f"server context: {config.sampling.context_tokens(prompt):,} tokens (the longest prompt to "
                        f"answer has {prompt:,}; at least 2,048 are kept for the prompt, with the longest answer)")
        symbolic.start()  # the grader's processes import (seconds of CPU) while the models load
        try:
            engines += [future.result() for future in [
                load_engine.submit(config, device=device, label=label, longest_prompt=prompt)
                for device, label in devices]]
            logger.info(f"worker {config.worker_name}: {config.model.model} with {chosen} on "
                        f"{', '.join(engine.label for engine in engines)}, batch {config.batch_size}, "
                        f"runs {', '.join(runs)}")
            logger.info(checkpoint_plan(config))
            for run in runs:  # one after another; each device leaves a run when it is finished
                if shutdown.requested:
                    break
                on_run = config.model_copy(update={"run": run})
                terminal = TerminalProgress(run)
                dashboard = RunDashboard.start(store, run, worker=config.worker_name, on_figures=terminal.fleet_figures)
                idle_exit = config.idle_exit if run == runs[-1] else 0.0
                futures = [run_device.submit(store, engine, on_run, keeper, shutdown, idle_exit, terminal.add, shards)
                           for engine in engines]
                wait(futures)  # a device that failed leaves the others working (its claims given back)
                dashboard.stop()
                terminal.close()
                for engine, future in zip(engines, futures):
                    try:
                        reports += future.result()
                    except DeviceBroken as error:
                        broken[engine.label] = str(error)
                        logger.error(f"{engine.label} stopped: {error}")
                if len(broken) == len(engines):
                    break
        finally:
            for engine in engines:
                engine.close()
    if broken and len(broken) == len(engines):
        stopped = "; ".join(f"{device}: {why}" for device, why in broken.items())
        raise UserError(f"Every device of this worker stopped: {stopped}. "
                        "Restart the machine (a GPU in this state rarely recovers in the same process); the items it "
                        "held are back in the store for the other workers.")
    result = worker_result(config, runs, reports, devices_loaded=[engine.label for engine in engines],
                           stopped=shutdown.reason, broken=broken)
    for device, total in result["devices"].items():
        logger.info(f"{device}: {total['done']} done, {total['failed']} failed, {total['tokens']} tokens, "
                    f"{total['tokens_per_second']} tokens/s")
    return result


def worker_result(config: WorkerConfig, runs: list[str], reports: list[BatchReport], *,
                  devices_loaded: Sequence[str] = (), stopped: str | None = None, broken: dict[str, str] | None = None,
                  nothing_to_do: bool = False) -> dict[str, Any]:
    """What the worker's flow run returns (and its command line prints): throughput per device, and how it ended."""
    return {"runs": runs, "worker": config.worker_name, "model": config.model.model_dump(),
            "sampling": config.sampling.model_dump(), "devices": summarize_reports(reports, devices_loaded),
            "stopped": stopped, "broken": broken or {}, "nothing_to_do": nothing_to_do}


def main(argv: list[str] | None = None) -> None:
    config = parse_command(WorkerConfig, argv, "flows/generate.py", __doc__)
    for device, label in worker_devices(config.engine, config.devices):  # fail fast, before Prefect starts
        if config.engine.name == "openai":  # one tiny request: URL, key and model name checked
            OpenAIEngine(api_base=device, model=config.model.model, label=label, settings=config.engine).close()
    result = run_from_command_line(generate, config, runs=None if config.run == DEFAULT_RUN else config.run,
                                   tags=(f"worker:{config.worker_name}",))  # the default is seeded
    if result["nothing_to_do"]:
        print(f"worker {result['worker']}: nothing to do, run(s) {', '.join(result['runs'])} have nothing pending or "
              "running. Next: python flows/evaluate.py --run RUN (accuracy), python flows/refine.py --run RUN (retry "
              "the wrong answers, then start workers again), or seed a new run.")
        return
    overall = result["devices"]["all"]
    ended = f"stopped ({result['stopped']})" if result["stopped"] else "finished"
    ended += "".join(f"; {device} stopped early (broken)" for device in result["broken"])
    print(f"worker {result['worker']}: run(s) {', '.join(result['runs'])} {ended}; this worker did {overall['done']} "
          f"items ({overall['failed']} failed) at {overall['tokens_per_second']} tokens/s")


if __name__ == "__main__":
    raise SystemExit(run_cli(main,
                             stopped_early="worker stopped (SIGTERM) while starting or ending; it held no claims"))
