"""The fleet under chaos (`bench/chaos.py`, 1,000 items): worker processes SIGKILLed and SIGTERMed
at random moments (starting, loading, working) and replaced, the database held locked for
seconds; every item is still done exactly once or failed with its error."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import drain, worker_flags
from tests.conftest import cli_env


def test_a_thousand_items_survive_kills_terms_and_locks(prefect_env, tmp_path: Path, tiny_model: Path) -> None:
    result = drain(folder=tmp_path / "chaos", model=tiny_model, env=cli_env(prefect_env), items=1000, workers=4,
                   every=3.0, worker_args=worker_flags(batch_size=8, max_new_tokens=8), timeout=170)
    assert result["kills"] >= 1 and result["terms"] >= 1 and result["locks"] >= 1, result
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["stale_writes"] == 0, result
    assert result["done"] + result["failed"] == 1000, result
    assert result["term_exit_codes"] == [0] and result["unclean_exits"] == {}, result
