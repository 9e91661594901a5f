"""Judge what the rules cannot read: `python flows/judge.py --run NAME --model PATH_OR_HUB_ID`.

For every answer whose final answer the rule-based grader could not read, asks a judge model (any
engine: a local model, or a hosted one through `--engine openai`) with prompts/judge.txt whether
the response's final answer equals the reference; stores its verdict beside the rules' one
(`result.judge`), never changing it. Answers already judged are skipped. `evaluate` then reports
accuracy by the rules and with the judge.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import JudgeConfig

    answer_early(JudgeConfig, "flows/judge.py", __doc__)


from collections import Counter
from contextlib import closing
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import run_from_command_line, run_name, start_flow
from tasks.cli import parse_command, run_cli
from tasks.config import JudgeConfig
from tasks.judge import judge_engine, judge_items, to_judge
from tasks.store import open_store
from tasks.store.runs import require_run
from tasks.store.steps import read_items


@flow(name="judge", flow_run_name=run_name, validate_parameters=False)
def judge(config: JudgeConfig) -> dict[str, Any]:
    """Judge the run's unreadable answers; returns how many were judged, and the verdicts' counts."""
    config = start_flow(JudgeConfig, config)
    logger = get_run_logger()
    with closing(open_store(config.store)) as store:
        require_run(store, config.run)
        items = to_judge(read_items(store, config.run, texts_url=config.texts))
        if not items:
            logger.info(f"run {config.run!r}: nothing to judge (every answer was read by the rules, or judged)")
            return {"run": config.run, "judged": 0, "verdicts": {}}
        engine = judge_engine(config)
        try:
            judgements = judge_items(engine, items, config.sampling, config.model.model)
        finally:
            engine.close()
        stored = store.add_judgements(config.run, judgements)
    verdicts = Counter({True: "yes", False: "no", None: "undecided"}[j["correct"]] for j in judgements.values())
    logger.info(f"run {config.run!r}: {stored} answers judged by {config.model.model}: {dict(verdicts)}")
    return {"run": config.run, "judged": stored, "verdicts": dict(verdicts)}


def main(argv: list[str] | None = None) -> None:
    result = run_from_command_line(judge, parse_command(JudgeConfig, argv, "flows/judge.py", __doc__))
    counts = ", ".join(f"{verdict} {n}" for verdict, n in sorted(result["verdicts"].items())) or "nothing to judge"
    print(f"run {result['run']!r}: {result['judged']} answers judged ({counts})")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
