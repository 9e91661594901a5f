"""Final answers out of text: a model's response, or a reference solution."""

from __future__ import annotations

import re

NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?"
HASHES = re.compile(r"####\s*(.+)")
PHRASES = [
    re.compile(r"final\s+answer\s*(?:is|:)\s*(.+)", re.I),
    re.compile(r"the\s+answer\s+is\s*:?\s*(.+)", re.I),
]
LAST_LINE_ANSWER = re.compile(r"^\s*A\s*:\s*(.+?)\s*$", re.I)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth < 0:
            return text[begin:index].strip()
    return None


def _clean(answer: str) -> str:
    answer = answer.strip().strip("*").strip()
    number = re.match(NUMBER, answer)
    return number.group(0).replace(" ", "") if number else answer.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer in a response: `####`, `\\boxed{}`, "final answer:", "The answer is",
    a last line `A: N`, else the last number; None when there is none."""
    if found := HASHES.findall(text):
        return _clean(found[-1])
    if boxed := _boxed(text):
        return boxed
    for phrase in PHRASES:
        if found := phrase.findall(text):
            return _clean(found[-1])
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines and (last := LAST_LINE_ANSWER.match(lines[-1])):
        return _clean(last.group(1))
    numbers = re.findall(NUMBER, text)
    return _clean(numbers[-1]) if numbers else None


def reference_answer(solution: str) -> str:
    """The reference answer of a solution: the text after its last `####` (thousands commas
    removed), else the whole text (GSM8K's convention, also used for users' files)."""
    final = solution.rsplit("####", 1)[-1] if "####" in solution else solution
    return final.strip().replace(",", "")
