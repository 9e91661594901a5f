"""How often each grader agrees with the graders' own test suites: `python bench/grading.py [--peers DIR]`.

The cases are `tests/data/grader_cases.jsonl` (math-verify, NeMo-Skills, hendrycks/math and
inspect_ai's math scorer, collected by `bench/grader_cases.py`). Each grader runs as its own
project runs it:
  fleetgen     `grade(response, reference)`: our extraction, then our equivalence;
  math-verify  `verify(parse(gold), parse(prediction))`, with its own tests' options on its cases;
  nemo-skills  `math_equal(gold, prediction)`, the prediction first through its `extract_answer`
               (last `\\boxed{}`) where it is a response;
  hendrycks    `is_equiv(gold, prediction)`, the prediction first through `last_boxed_only_string`
               and `remove_boxed` where it is a response;
  inspect-ai   its math scorer's worker on (completion, target).
Peers other than math-verify need `--peers DIR` (checkouts named `NeMo-Skills`, `math`) and, for
inspect-ai, the `inspect_ai` package installed; missing ones are skipped, saying so. Prints
agreement per suite and on the union, and with `--show fleetgen` the cases a grader gets wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a peers' environment too

from tasks.grading import grade  # noqa: E402
from tasks.grading.extract import reference_answer  # noqa: E402

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "grader_cases.jsonl"
Grader = Callable[[dict[str, Any]], bool]


def load_cases() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines()]


def fleetgen(case: dict[str, Any]) -> bool:
    return grade(case["prediction"], reference_answer(case["gold"])).correct


def math_verify(case: dict[str, Any]) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    options = case["options"] if case["suite"] == "math-verify" else {}
    if not options:
        return bool(verify(parse(case["gold"]), parse(case["prediction"])))
    targets = [LatexExtractionConfig(boxed_match_priority=0) if kind == "latex" else ExprExtractionConfig()
               for kind in options["match_types"]]
    return bool(verify(parse(case["gold"], targets), parse(case["prediction"], targets),
                       float_rounding=options["precision"], strict=options["strict"],
                       allow_set_relation_comp=options["allow_set_relation_comp"]))


def _module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nemo_skills(peers: Path) -> Grader:
    sys.modules.setdefault("nemo_skills", types.ModuleType("nemo_skills"))
    utils = sys.modules.setdefault("nemo_skills.utils", types.ModuleType("nemo_skills.utils"))
    utils.get_logger_name = lambda file: "nemo_skills"  # type: ignore[attr-defined]
    grader = _module(peers / "NeMo-Skills" / "nemo_skills" / "evaluation" / "math_grader.py", "nemo_math_grader")

    def run(case: dict[str, Any]) -> bool:
        gold, prediction = case["gold"], case["prediction"]
        if case["kind"] != "answers":
            gold = grader.extract_answer(gold) or gold
            prediction = grader.extract_answer(prediction)
        return bool(grader.math_equal(gold, prediction))

    return run


def hendrycks(peers: Path) -> Grader:
    equivalence = _module(peers / "math" / "modeling" / "math_equivalence.py", "hendrycks_math_equivalence")

    def boxed(text: str) -> str | None:
        index = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
        if index < 0:
            return None
        depth = 0
        for end in range(index, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if text[end] == "}" and depth == 0:
                found = text[index:end + 1]
                return found[len("\\boxed{"):-1] if found.startswith("\\boxed{") else None
        return None

    def run(case: dict[str, Any]) -> bool:
        gold, prediction = case["gold"], case["prediction"]
        if case["kind"] != "answers":  # as its eval_math_gpt.py does: last_boxed_only_string + remove_boxed
            gold, prediction = boxed(gold) or gold, boxed(prediction)
        return bool(equivalence.is_equiv(gold, prediction))

    return run


def inspect_ai() -> Grader:
    from inspect_ai.scorer import _math

    def run(case: dict[str, Any]) -> bool:
        targets, _ = _math._parse_targets_worker((case["gold"],))
        return _math._score_answer_worker(case["prediction"], targets).status == "correct"

    return run


def graders(peers: Path | None) -> dict[str, Grader]:
    found: dict[str, Grader] = {"fleetgen": fleetgen, "math-verify": math_verify}
    for name, make in (("nemo-skills", nemo_skills), ("hendrycks", hendrycks), ("inspect-ai", None)):
        try:
            if make is None:
                found[name] = inspect_ai()
            elif peers is None:
                raise FileNotFoundError("no --peers folder")
            else:
                found[name] = make(peers)
        except (ImportError, FileNotFoundError, OSError) as error:
            print(f"skipped {name}: {error}", file=sys.stderr)
    return found


def verdict(grader: Grader, case: dict[str, Any]) -> bool:
    try:
        return grader(case)
    except Exception:  # a grader that raises has not said "equal"
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=Path, help="folder with checkouts of NeMo-Skills and hendrycks/math")
    parser.add_argument("--show", metavar="GRADER", help="list the cases this grader disagrees with")
    args = parser.parse_args()
    cases = load_cases()
    suites = sorted({case["suite"] for case in cases})
    table = {}
    for name, grader in graders(args.peers).items():
        agree = [verdict(grader, case) == case["expected"] for case in cases]
        table[name] = {suite: (sum(a for a, c in zip(agree, cases) if c["suite"] == suite),
                               sum(c["suite"] == suite for c in cases)) for suite in suites}
        table[name]["union"] = (sum(agree), len(cases))
        if name == args.show:
            for ok, case in zip(agree, cases):
                if not ok:
                    print(json.dumps({k: case[k] if not isinstance(case[k], str) else case[k][-300:]
                                      for k in ("suite", "source", "gold", "prediction", "expected")}))
    print(f"{'grader':<12}" + "".join(f"{column:>16}" for column in [*suites, "union"]))
    for name, row in table.items():
        print(f"{name:<12}" + "".join(f"{f'{a}/{n} {a / n:.1%}':>16}" for a, n in row.values()))


if __name__ == "__main__":
    main()
