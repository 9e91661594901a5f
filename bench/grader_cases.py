"""Collect the peer graders' own test cases into one file: `python bench/grader_cases.py --peers DIR`.

DIR holds checkouts of huggingface/Math-Verify, NVIDIA/NeMo-Skills, hendrycks/math and
UKGovernmentBEIS/inspect_ai (folders `Math-Verify`, `NeMo-Skills`, `math`, `inspect_ai`). Their
test files are read as data (Python's `ast`, nothing of theirs is run or copied) into
`tests/data/grader_cases.jsonl`, one case a line: suite, source, gold, prediction, expected, kind
(`answers`: both sides bare answers; `texts`: both sides free text, as math-verify parses them;
`response`: a model's response against a bare reference) and the options the suite's own test
passes to its grader. `bench/grading.py` measures every grader on them.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
from pathlib import Path
from typing import Any, Iterator

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "grader_cases.jsonl"
MATH_VERIFY_FILES = ("test_all.py", "test_boxed.py", "test_numina_cases.py", "test_open_thoughts.py",
                     "test_strict.py", "test_yujianll.py")
MATH_VERIFY_DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True,
                        "allow_set_relation_comp": False}


def _parametrized(tree: ast.Module) -> Iterator[tuple[ast.FunctionDef, list[str], list[tuple]]]:
    """(test function, argument names, rows) for every `@pytest.mark.parametrize` test."""
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize":
                names = [name.strip() for name in ast.literal_eval(decorator.args[0]).split(",")]
                rows = _value(decorator.args[1])
                yield node, names, [(row,) if len(names) == 1 else row for row in rows]


def _value(node: ast.expr) -> Any:
    """A literal; or, for the one f-string in math-verify's tests (`f"{math.sqrt(17):.15f}"`), its
    value computed with nothing but `math` at hand."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.List):
            return [_value(element) for element in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(_value(element) for element in node.elts)
        return eval(compile(ast.Expression(node), "<case>", "eval"), {"__builtins__": {}, "math": math})


def _call_options(function: ast.FunctionDef) -> dict[str, Any]:
    """The keyword arguments the test passes to its grader call (literals, or a parameter's name)."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("compare_strings", "verify"):
            options: dict[str, Any] = {}
            for keyword in node.keywords:
                try:
                    options[str(keyword.arg)] = ast.literal_eval(keyword.value)
                except ValueError:
                    options[str(keyword.arg)] = f"${ast.unparse(keyword.value)}"  # a parameter: per row
            return options
    return {}


def math_verify_cases(folder: Path) -> Iterator[dict[str, Any]]:
    for name in MATH_VERIFY_FILES:
        tree = ast.parse((folder / "tests" / name).read_text(encoding="utf-8"))
        for function, names, rows in _parametrized(tree):
            options = {**MATH_VERIFY_DEFAULTS, **_call_options(function)}
            for row in rows:
                values = dict(zip(names, row))
                case_options = {key: values[value[1:]] if isinstance(value, str) and value.startswith("$") else value
                                for key, value in options.items()}
                yield {"suite": "math-verify", "source": f"tests/{name}::{function.name}", "gold": values["gold"],
                       "prediction": values["pred"], "expected": bool(values.get("expected", values.get("result"))),
                       "kind": "texts", "options": case_options}


def nemo_skills_cases(folder: Path) -> Iterator[dict[str, Any]]:
    tree = ast.parse((folder / "tests" / "test_math_equal.py").read_text(encoding="utf-8"))
    for function, _, rows in _parametrized(tree):
        expected = function.name == "test_correct_examples"
        for (pair,) in rows:
            for gold, prediction in (pair, pair[::-1]):  # their test checks both orders
                if gold is None or prediction is None:
                    continue  # a Python None, not an answer text
                yield {"suite": "nemo-skills", "source": f"tests/test_math_equal.py::{function.name}",
                       "gold": str(gold), "prediction": str(prediction), "expected": expected, "kind": "answers",
                       "options": {}}


def hendrycks_cases(folder: Path) -> Iterator[dict[str, Any]]:
    tree = ast.parse((folder / "modeling" / "math_equivalence_test.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        values = {target.id: ast.literal_eval(assign.value) for assign in node.body if isinstance(assign, ast.Assign)
                  for target in assign.targets if isinstance(target, ast.Name)}
        check = next(n for n in ast.walk(node) if isinstance(n, ast.Call) and getattr(n.func, "attr", "").startswith(
            "assert"))
        yield {"suite": "hendrycks", "source": f"modeling/math_equivalence_test.py::{node.name}",
               "gold": values["test_in"], "prediction": values["test_out"],
               "expected": getattr(check.func, "attr") == "assertTrue",
               "kind": "answers", "options": {}}


def inspect_cases(folder: Path) -> Iterator[dict[str, Any]]:
    for index, case in enumerate(json.loads((folder / "tests" / "scorer" / "math_cases.json").read_text("utf-8"))):
        yield {"suite": "inspect-ai", "source": f"tests/scorer/math_cases.json[{index}] ({case['source']})",
               "gold": case["target"], "prediction": case["output"], "expected": case["expected"] == "C",
               "kind": "response", "options": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=Path, required=True, help="folder with the four checkouts")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    cases = [*math_verify_cases(args.peers / "Math-Verify"), *nemo_skills_cases(args.peers / "NeMo-Skills"),
             *hendrycks_cases(args.peers / "math"), *inspect_cases(args.peers / "inspect_ai")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(case, ensure_ascii=False) + "\n" for case in cases), encoding="utf-8")
    suites: dict[str, int] = {}
    for case in cases:
        suites[case["suite"]] = suites.get(case["suite"], 0) + 1
    print(f"wrote {len(cases)} cases to {args.out}: " + ", ".join(f"{k} {v}" for k, v in suites.items()))


if __name__ == "__main__":
    main()
