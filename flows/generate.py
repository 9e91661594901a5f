"""The worker every machine of the fleet runs: `python flows/generate.py --model PATH_OR_HUB_ID`.

Loads one model copy per device, then each device loops claim -> generate -> grade -> complete
in its own thread until the run has nothing pending and nothing running. With no flags it runs
the default job: the embedded store, the run `gsm8k-test` (seeded from the shipped GSM8K test
split when empty) and a small instruct model from the hub.
"""

from __future__ import annotations

import argparse
import os
import socket
from contextlib import closing
from dataclasses import asdict
from typing import Any
from uuid import UUID

from flows.common import retry_unless_user_error, reveal
from prefect import flow, tags, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from pydantic import SecretStr

from flows.seed import seed as seed_flow
from tasks.cli import DEFAULT_RUN, UserError, command_parser, positive_int, run_cli
from tasks.generation import (DTYPES, QUANTIZATIONS, LoadedModel, ModelSpec, Sampling, device_labels,
                              resolve_devices)
from tasks.prompts import check_question_template, question_templates
from tasks.progress import FleetProgress, describe
from tasks.store import Claim, Store, artifact_key, check_store, open_store, summarize
from tasks.worker import (Answered, BatchReport, LeaseKeeper, WorkerSettings, answer_claim, device_loop, run_finished,
                          save_answers)

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def load_model(spec: ModelSpec, device: str, label: str) -> LoadedModel:
    """Load one model copy on one device."""
    return LoadedModel(spec, device, label)


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def claim_batch(store: Store, settings: WorkerSettings) -> Claim:
    """Claim the next batch (never cached: a cached claim would hand one batch out twice)."""
    return store.claim(settings.run, settings.worker, settings.batch_size, settings.lease_seconds)


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def answer_batch(claim: Claim, model: LoadedModel, settings: WorkerSettings) -> Answered:
    """Generate and grade one batch (one task run per batch, never per item)."""
    answered = answer_claim(claim, model, settings)
    report = answered.report
    get_run_logger().info(f"{report.device}: {report.items} items, {report.tokens} tokens in {report.seconds:.1f} s "
                          f"= {report.tokens / max(report.seconds, 1e-9):.1f} tokens/s")
    return answered


@task(retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def save_batch(store: Store, answered: Answered, settings: WorkerSettings, progress: FleetProgress,
               artifact_id: UUID) -> BatchReport:
    """Write one batch's results back (idempotent: the claim token guards every write), then
    update the run's fleet-wide progress artifact."""
    report = save_answers(store, answered, settings.max_attempts)
    try:
        snapshot = progress.update(summarize(store.counts(settings.run)))
        update_progress_artifact(artifact_id, snapshot["percent"], describe(snapshot))
    except Exception as error:  # the dashboard is best effort: never redo a saved batch for it
        get_run_logger().warning(f"progress artifact not updated: {error}")
    return report


@task(cache_policy=NO_CACHE)
def generate_on_device(store: Store, model: LoadedModel, settings: WorkerSettings, keeper: LeaseKeeper,
                       progress: FleetProgress, artifact_id: UUID) -> list[BatchReport]:
    """One device's loop, in its own thread."""
    return device_loop(
        claim_next=lambda: claim_batch(store, settings),
        answer=lambda claim: answer_batch(claim, model, settings),
        save=lambda answered: save_batch(store, answered, settings, progress, artifact_id),
        finished=lambda: run_finished(store, settings.run),
        keeper=keeper, poll_seconds=settings.poll_seconds)


def summarize_reports(reports: list[BatchReport]) -> dict[str, dict[str, float]]:
    """Items, tokens, seconds and tokens/s per device and overall."""
    totals: dict[str, dict[str, float]] = {}
    for report in reports:
        for key in (report.device, "all"):
            total = totals.setdefault(key, {"batches": 0, "items": 0, "done": 0, "failed": 0, "tokens": 0, "seconds": 0.0})
            for field in ("items", "done", "failed", "tokens", "seconds"):
                total[field] += getattr(report, field)
            total["batches"] += 1
    for total in totals.values():
        total["tokens_per_second"] = round(total["tokens"] / max(total["seconds"], 1e-9), 1)
        total["seconds"] = round(total["seconds"], 2)
    return totals


def _flow_run_name() -> str:
    parameters = flow_run.parameters
    return f"{parameters.get('run')} @ {parameters.get('worker') or default_worker()}"


@flow(name="generate", flow_run_name=_flow_run_name)
def generate(store: SecretStr | None = None, run: str = DEFAULT_RUN, model: str = DEFAULT_MODEL,
             adapter: str | None = None, merge_adapter: bool = False, quantization: str = "none",
             dtype: str = "auto", devices: str = "auto", batch_size: int = 16, max_new_tokens: int = 512,
             temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0,
             prompt: str = "step_by_step", worker: str | None = None, lease_seconds: float = 600.0,
             extract: str = "regex") -> dict[str, Any]:
    """Work on a run until it has nothing pending and nothing running; returns throughput per device."""
    import transformers

    logger = get_run_logger()
    check_question_template(prompt)  # fails before any model loads
    names = resolve_devices(devices)
    settings = WorkerSettings(
        run=run, worker=worker or default_worker(), batch_size=batch_size, lease_seconds=lease_seconds,
        prompt=prompt, sampling=Sampling(max_new_tokens, temperature, top_p, repetition_penalty), extract=extract)
    spec = ModelSpec(model, adapter, merge_adapter, quantization, dtype)
    with closing(open_store(reveal(store))) as work:
        if run == DEFAULT_RUN and run not in work.runs():
            seed_flow(store, run, "gsm8k", "test")
        transformers.set_seed(seed)
        loading = [load_model.submit(spec, name, label) for name, label in zip(names, device_labels(names))]
        models = [future.result() for future in loading]
        logger.info(f"worker {settings.worker}: {spec.model} on {', '.join(names)}, batch {batch_size}")
        progress = FleetProgress()
        snapshot = progress.update(summarize(work.counts(run)))
        artifact_id = create_progress_artifact(snapshot["percent"], key=f"progress-{artifact_key(run)}",
                                               description=describe(snapshot))
        with LeaseKeeper(work, lease_seconds) as keeper:
            futures = [generate_on_device.submit(work, loaded, settings, keeper, progress, artifact_id)
                       for loaded in models]
            reports = [report for future in futures for report in future.result()]
    totals = summarize_reports(reports)
    for device, total in totals.items():
        logger.info(f"{device}: {total['done']} done, {total['failed']} failed, {total['tokens']} tokens, "
                    f"{total['tokens_per_second']} tokens/s")
    return {"run": run, "worker": settings.worker, "model": spec.describe(), "sampling": asdict(settings.sampling),
            "devices": totals}


def parser() -> argparse.ArgumentParser:
    p = command_parser("flows/generate.py", __doc__)
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH_OR_HUB_ID",
                   help=f"a local folder (save_pretrained) or a hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--adapter", metavar="PATH", help="a PEFT LoRA adapter folder to apply to the model")
    p.add_argument("--merge-adapter", action="store_true", help="merge the adapter into the weights (faster; not with quantization)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                   help="bitsandbytes: 4bit = nf4, double quantization, fp16 compute; 8bit (CUDA only; default: none)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weights dtype; auto = bfloat16 on GPUs that have it, float16 on others (T4), float32 on CPU")
    p.add_argument("--devices", default="auto",
                   help="one model copy per listed device: auto (every visible GPU, else cpu), cuda:0,cuda:1, cpu, cpu,cpu")
    p.add_argument("--batch-size", type=positive_int, default=16, help="items claimed and generated together (default: 16)")
    p.add_argument("--max-new-tokens", type=positive_int, default=512, help="default: 512")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when temperature > 0 (default: 1)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="default: 1 (none)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")
    p.add_argument("--prompt", default="step_by_step",
                   help=f"a question template in prompts/: {', '.join(question_templates())} (default: step_by_step)")
    p.add_argument("--extract", choices=("regex", "llm"), default="regex",
                   help="llm: a second pass with prompts/extract.txt for responses with no parsable answer (default: regex)")
    p.add_argument("--worker", metavar="NAME", help="this worker's name in the store and the UI (default: host-pid)")
    p.add_argument("--lease-seconds", type=float, default=600.0,
                   help="how long claimed items stay reserved without a heartbeat; a dead worker's items are taken "
                        "over after this (default: 600)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not (0 <= args.temperature and 0 < args.top_p <= 1 and args.lease_seconds > 0):
        raise UserError("--temperature must be >= 0, --top-p in (0, 1] and --lease-seconds > 0.")
    resolve_devices(args.devices)  # fail fast, before Prefect starts
    check_question_template(args.prompt)
    check_store(args.store, None if args.run == DEFAULT_RUN else args.run)  # the default run is seeded when missing
    worker = args.worker or default_worker()
    with tags(f"run:{args.run}", f"worker:{worker}"):
        result = generate(args.store, args.run, args.model, args.adapter, args.merge_adapter, args.quantization,
                          args.dtype, args.devices, args.batch_size, args.max_new_tokens, args.temperature,
                          args.top_p, args.repetition_penalty, args.seed, args.prompt, worker, args.lease_seconds,
                          args.extract)
    overall = result["devices"].get("all", {})
    print(f"worker {result['worker']}: run {result['run']!r} finished; this worker did {overall.get('done', 0)} items "
          f"({overall.get('failed', 0)} failed) at {overall.get('tokens_per_second', 0)} tokens/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
