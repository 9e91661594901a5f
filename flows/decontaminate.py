"""Check a run against the benchmarks' test splits: `python flows/decontaminate.py --run NAME`.

Each question of the run (and with --answers each answer) is checked against the test split of
every benchmark shipped or found in --data-dir, and any --against JSONL file: word 8-grams (open-r1's
check; normalisation: NFKC, lowercase, punctuation as spaces), and with --embedding-model the
nearest test questions by sentence embedding, each confirmed by a judge model (--model, any engine)
asked "same problem?" both ways (prompts/same_problem.txt). The run keeps the report: which test
item each contaminated question matched, by which check. `export --format sft|dpo` then leaves
those questions out and says so in the dataset card.
"""

from __future__ import annotations

if __name__ == "__main__":  # --help and bad flags answer before the heavy imports below
    from tasks.cli import answer_early
    from tasks.config import DecontaminateConfig

    answer_early(DecontaminateConfig, "flows/decontaminate.py", __doc__)


from collections import Counter
from contextlib import closing
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.common import run_from_command_line, run_name, start_flow
from tasks.cli import parse_command, run_cli
from tasks.config import DecontaminateConfig
from tasks.decontamination import check_run
from tasks.store import open_store
from tasks.store.runs import require_run
from tasks.store.steps import read_items


@flow(name="decontaminate", flow_run_name=run_name, validate_parameters=False)
def decontaminate(config: DecontaminateConfig) -> dict[str, Any]:
    """Check the run's questions against the test sets and keep the report in the store."""
    config = start_flow(DecontaminateConfig, config)
    with closing(open_store(config.store)) as store:
        require_run(store, config.run)
        found = check_run(read_items(store, config.run, texts_url=config.texts), config)
        store.set_contamination(config.run, found)
    by_test_set = dict(Counter(match["test_set"] for match in found["matches"]))
    get_run_logger().info(
        f"run {config.run!r}: {found['contaminated']} of {found['checked']} questions found in test sets "
        f"({', '.join(f'{name} {n}' for name, n in by_test_set.items()) or 'none'}), checked against "
        f"{sum(test_set['questions'] for test_set in found['test_sets']):,} test questions in {found['seconds']} s"
        + (f"; not checked (not shipped, no --data-dir): {', '.join(found['not_checked'])}"
           if found["not_checked"] else ""))
    return {"run": config.run, "checked": found["checked"], "contaminated": found["contaminated"],
            "by_test_set": by_test_set, "not_checked": found["not_checked"]}


def main(argv: list[str] | None = None) -> None:
    result = run_from_command_line(decontaminate, parse_command(DecontaminateConfig, argv, "flows/decontaminate.py",
                                                                __doc__))
    where = ", ".join(f"{name} {n}" for name, n in result["by_test_set"].items())
    print(f"run {result['run']!r}: {result['contaminated']} of {result['checked']} questions found in a test set"
          + (f" ({where})" if where else ""))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
