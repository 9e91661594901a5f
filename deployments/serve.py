"""Refine and evaluate on a schedule from one always-on process: `python deployments/serve.py`.

Prefect Cloud's free tier allows 5 deployments and managed work pools only, so `serve` (which
needs no work pool) is the way there. Run it on any machine that stays up (even a small VM); it
reads the store from MONGODB_URI, so no URL ever lands in Prefect.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import ServeConfig

    answer_early(ServeConfig, "deployments/serve.py", __doc__)


from typing import Any

from flows.common import prefect_session
from flows.evaluate import evaluate
from flows.refine import refine
from tasks.cli import parse_command, run_cli
from tasks.config import EvaluateConfig, RefineConfig, ServeConfig


def build_deployments(config: ServeConfig) -> list[Any]:
    """The refine and evaluate deployments of one run. Their settings are checked by the flows
    themselves (enforce_parameter_schema off), so a bad value there reads as on the command line."""
    refine_config = RefineConfig(run=config.run, max_rounds=config.max_rounds)
    evaluate_config = EvaluateConfig(run=config.run, json_path=config.json_path)
    return [
        refine.to_deployment(name=f"refine-{config.run}", cron=config.refine_cron, tags=[f"run:{config.run}"],
                             parameters={"config": refine_config}, enforce_parameter_schema=False),
        evaluate.to_deployment(name=f"evaluate-{config.run}", cron=config.evaluate_cron, tags=[f"run:{config.run}"],
                               parameters={"config": evaluate_config}, enforce_parameter_schema=False),
    ]


def main(argv: list[str] | None = None) -> None:
    config = parse_command(ServeConfig, argv, "deployments/serve.py", __doc__)
    from prefect import serve

    with prefect_session():
        serve(*build_deployments(config))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
