"""Decontamination's cost and its n-gram check's hit rate on known cases: `python bench/decontamination.py`.

(a) the time to check 10,000 questions (GSM8K train's 7,473 and the first 2,527 of MATH test)
    against every shipped test split: loading the test sets, building the index, checking;
(b) hit rates of the n-gram check: 8-grams with fleetgen's normalisation (open-r1's: lowercase,
    whitespace split, punctuation kept on its words; after NFKC), 8-grams with punctuation dropped
    (each run of characters other than letters and digits a space), and 13-grams:
    - GSM8K train against GSM8K test: disjoint splits, so every hit is a shared phrase or a real
      near-duplicate;
    - MATH test against MATH-500 (a subset of it): the 500 should all be found, the other 4,500 not;
    - 12 GSM8K test questions reworded by hand (tests/data/reworded_gsm8k_test.jsonl) against GSM8K
      test: found as their own original or not.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.benchmarks import DATA_DIR, load_rows, resolve_source  # noqa: E402
from tasks.decontamination import HeldOutQuestion, NgramIndex, held_out_questions, ngram_matches, words  # noqa: E402


def without_punctuation(text: str) -> list[str]:
    return re.sub(r"[\W_]+", " ", " ".join(words(text))).split()


def main() -> None:
    started = time.perf_counter()
    tests, _ = held_out_questions()
    loaded = time.perf_counter()
    index = NgramIndex(tests)
    indexed = time.perf_counter()
    train = {row.question_id: row.question for row in load_rows(resolve_source("gsm8k", "train"))}
    math = {row.question_id: row.question for row in load_rows(resolve_source("math", "test"))}
    questions = {**train, **dict(list(math.items())[:10_000 - len(train)])}
    checking = time.perf_counter()
    ngram_matches(index, questions)
    done = time.perf_counter()
    print(f"(a) {len(questions):,} questions against {len(tests):,} test questions: {done - started:.2f} s in all "
          f"(test sets {loaded - started:.2f} s, index {indexed - loaded:.2f} s, check {done - checking:.2f} s)")

    gsm8k_test = [test for test in tests if test.test_set == "gsm8k/test"]
    math500_ids = {line.split()[0] for line in (DATA_DIR / "math/math500.txt").read_text().splitlines()
                   if line and line[0] != "#"}
    math500 = [HeldOutQuestion("math-500", question_id, math[question_id]) for question_id in sorted(math500_ids)]
    reworded = {row["id"]: row["question"] for row in
                map(json.loads, (ROOT / "tests/data/reworded_gsm8k_test.jsonl").read_text().splitlines())}
    for name, n, tokens in (("8-grams", 8, words), ("8-grams, punctuation dropped", 8, without_punctuation),
                            ("13-grams", 13, words)):
        on_gsm8k, on_math500 = NgramIndex(gsm8k_test, n, tokens), NgramIndex(math500, n, tokens)
        train_hits = ngram_matches(on_gsm8k, train)
        math_hits = ngram_matches(on_math500, math)
        found_500 = sum(question_id in math_hits for question_id in math500_ids)
        others = sum(question_id not in math500_ids for question_id in math_hits)
        own = sum(match["test_id"] == question_id for question_id, match in ngram_matches(on_gsm8k, reworded).items())
        print(f"(b) {name}: GSM8K train against test {len(train_hits)} of {len(train):,} flagged "
              f"({len(train_hits) / len(train):.1%}); MATH test against MATH-500: {found_500} of 500 found, "
              f"{others} of {len(math) - 500:,} others flagged; reworded by hand: {own} of {len(reworded)} found")


if __name__ == "__main__":
    main()
