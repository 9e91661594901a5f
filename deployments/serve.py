"""Refine and evaluate on a schedule from one always-on process: `python deployments/serve.py`.

Prefect Cloud's free tier allows 5 deployments and managed work pools only, so `serve` (which
needs no work pool) is the way there. Run it on any machine that stays up (even a small VM); it
reads the store from MONGODB_URI, so no URL ever lands in Prefect.
"""

from __future__ import annotations

import argparse

import flows.common  # noqa: F401  (Prefect defaults, set before Prefect is imported)
from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.evaluate import evaluate
from flows.refine import refine
from tasks.cli import add_run_arg, run_cli


def build_deployments(run: str, max_rounds: int, refine_cron: str, evaluate_cron: str,
                      json_path: str | None) -> list[RunnerDeployment]:
    return [
        refine.to_deployment(name=f"refine-{run}", cron=refine_cron, parameters={"run": run, "max_rounds": max_rounds},
                             tags=[f"run:{run}"]),
        evaluate.to_deployment(name=f"evaluate-{run}", cron=evaluate_cron,
                               parameters={"run": run, "json_path": json_path}, tags=[f"run:{run}"]),
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python deployments/serve.py", description=__doc__.split("\n")[0])
    add_run_arg(p)
    p.add_argument("--max-rounds", type=int, default=2, help="refine rounds at most (default: 2)")
    p.add_argument("--refine-cron", default="*/30 * * * *", help="when refine runs (default: every 30 minutes)")
    p.add_argument("--evaluate-cron", default="15 * * * *", help="when evaluate runs (default: hourly at :15)")
    p.add_argument("--json", metavar="PATH", help="evaluate also writes its JSON and PNG here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    serve(*build_deployments(args.run, args.max_rounds, args.refine_cron, args.evaluate_cron, args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
