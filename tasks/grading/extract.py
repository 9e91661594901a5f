"""Final answers out of text, read the way a person reads them: a model's response, or a
reference solution.

A response's answer is, in this order: the last `\\boxed{}` (or `\\fbox{}`); a `#### answer` line;
"final answer is X" (also Minerva's "Final Answer: The final answer is X. I hope it is correct.");
"the answer is X" (of a sentence there holding several numbers, the first: the one it states),
"answer (arabic numerals) is X", "Answer: X", a last line "A: X"; a short text
that is an answer in itself; the last LaTeX segment (the right side of its last `=`); else the
last number. Numbers are read whole: `20 - 8` ends in `8`, `2023-01-05` is a date, `1 1/2` and
`2½` mixed numbers, `1,234` and `56,01,78,95,760` one number, `2,74` one (a decimal comma, or a
list: see equivalence.py), `(1, 2)` a pair.
"""

from __future__ import annotations

import re

SCAN_TAIL = 20_000  # the end of a response holds its answer; scanning less keeps every regex linear
BOXED = re.compile(r"(?:\\(?:begin)?)?boxed\s*\{|\\fbox\s*\{")  # also a mangled `\beginboxed{`
CONNECTOR = re.compile(r"(?:\s|[,;.$]|\\[\[\]()]|\\q?quad|\\text\{\s*(?:and|or)?\s*\}|\band\b|\bor\b)*")
HASHES = re.compile(r"####[ \t]*([^\n]*\S)")
FINAL = re.compile(r"final\s+answer\s*(?:is|:|=)?\s*(?:the\s+final\s+answer\s+is\s*)?:?\s*([^\n]*)", re.I)
ANSWER = re.compile(r"(?:\banswer\s*(?:\([^)\n]{0,40}\))?\s*(?:is|:|=)|\banswer\*\*\s*:?|\bA\s*:)\s*:?\s*([^\n]*)",
                    re.I)
AFTERWORD = re.compile(r"(?:\.\s+|\s+)(?:I hope|Hope|This is|That is|Therefore|So\b|Thus\b|which\b|because\b)"
                       r".*$|\.\s*$", re.I)
NUMBER = re.compile(
    r"\d{4}-\d{2}-\d{2}"  # a date, read whole
    r"|(?<![\w.)\]}])-?(?:\d+\s+\d+/\d+"  # a mixed number: 1 1/2
    r"|\d{1,2}(?:,\d{2})+,\d{3}(?![\d,])"  # Indian digit grouping: 56,01,78,95,760
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?"  # thousands separators: 1,234.5
    r"|(?:\d+,\d{1,2}|0,\d+)(?![\d,])"  # a decimal comma (or a short list): 2,74, 0,111
    r"|\d*[\u00bc-\u00be\u2150-\u215e]"  # a vulgar fraction: 2½
    r"|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"  # 12, 0.5, 3/4
    r"|\.\d+)")  # .5
THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
LATEX_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$((?:[^$\\]|\\.)+?)\$", re.S)


def _braced(text: str, open_at: int) -> str | None:
    """The content of the brace group opening at `text[open_at] == "{"`, braces balanced."""
    depth = 0
    for index in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[open_at + 1:index]
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`, `\\boxed 5`); boxes that end the
    text one after another (`\\boxed{-2} and \\boxed{1}`) are one answer, a list."""
    end: int | None = None
    found: list[str] = []
    for match in reversed(list(BOXED.finditer(text))):
        content = _braced(text, match.end() - 1)
        if content is None or not content.strip():
            continue
        if end is not None and not CONNECTOR.fullmatch(text[match.end() + len(content) + 1:end]):
            break
        found.insert(0, content.strip())
        end = match.start()
    if found:
        return ", ".join(found)
    bare = re.findall(r"\\boxed\s+([^\s$]+)", text)
    return bare[-1] if bare else None


def _boxed_position(text: str) -> int:
    return max((match.start() for match in BOXED.finditer(text)), default=-1)


def strip_math(text: str) -> str:
    """An answer without its LaTeX delimiters, Markdown emphasis and closing punctuation."""
    text = text.strip()
    for _ in range(3):
        before = text
        text = text.strip().strip("*").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")):
            if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
                text = text[len(left):-len(right)].strip()
        text = re.sub(r"^\\text\{\s*(?:is|=|:)?\s*\}", "", text).strip()
        text = text.rstrip(".,;:!").strip()
        if text.endswith("$") and text.count("$") == 1:
            text = text[:-1].strip()
        if text.startswith("$") and text.count("$") == 1:
            text = text[1:].strip()
        if text == before:
            break
    return text


def _after_phrase(rest: str) -> str | None:
    """The answer in the text that follows "the answer is": a boxed one, else up to the end of
    its sentence (a closing remark such as "I hope it is correct" dropped)."""
    if boxed := last_boxed(rest):
        return boxed
    if (math := LATEX_SEGMENT.match(rest.strip())) is not None:
        return next(group for group in math.groups() if group is not None)
    answer = strip_math(AFTERWORD.sub("", rest.strip()))
    numbers = list(NUMBER.finditer(answer))
    if len(numbers) > 1 and not _is_bare_answer(answer):  # a sentence states its answer first: "Jason has
        return numbers[0].group(0).strip()  # 250 minutes left if this month has 30 days"
    return answer or None


def _is_bare_answer(text: str) -> bool:
    """A short text that is an answer in itself (`x^2 + 2x + 1`, `10, 4, -2`, `42 apples`,
    `Evelyn`), not a sentence around one."""
    text = text.strip()
    if len(text) > 80 or "\n" in text or LATEX_SEGMENT.search(text) and not LATEX_SEGMENT.fullmatch(text):
        return False
    if UNPRINTABLE.search(text):  # control characters, undecodable bytes: noise, not an answer
        return False
    plain = re.sub(r"\\[a-zA-Z]+", " ", strip_math(text))
    words = re.findall(r"[A-Za-z]{2,}", plain)
    if digit := re.search(r"\d", plain):  # a number, maybe followed by its unit: no word before it
        return not re.search(r"[A-Za-z]{2,}", plain[:digit.start()]) and len(words) <= 3
    return len(words) <= 3 and not re.search(r"[.!?]\s", plain)


def extract_answer(text: str) -> str | None:
    """The final answer in a response; None when it has none."""
    text = text[-SCAN_TAIL:]
    phrases = [match for phrase in (HASHES, FINAL) for match in phrase.finditer(text)]
    last_phrase = max(phrases, key=lambda match: match.start(), default=None)
    if last_phrase is not None and last_phrase.start() > _boxed_position(text):
        answer = strip_math(last_phrase.group(1)) if last_phrase.re is HASHES else _after_phrase(last_phrase.group(1))
        if answer:
            return answer
    if boxed := last_boxed(text):
        return strip_math(boxed)
    for match in reversed(list(ANSWER.finditer(text))):
        if answer := _after_phrase(match.group(1)):
            return answer
    if _is_bare_answer(text) and text.strip():
        return strip_math(text)
    if (listed := _math_list(text)) is not None:
        return listed
    return _last_math_or_number(text)


def stated_answer(text: str) -> str | None:
    """The final answer only where the response states one (`####`, "final answer", `\\boxed{}`,
    "the answer is"), not a last number merely found in it (what training data needs)."""
    tail = text[-SCAN_TAIL:]
    stated = HASHES.search(tail) or FINAL.search(tail) or ANSWER.search(tail) or last_boxed(tail) is not None
    return extract_answer(text) if stated else None


def _math_list(text: str) -> str | None:
    """A short text made of LaTeX segments and connectors only (`$1$ and $2$`, `$21,16$ or $11$`): one list."""
    segments = list(LATEX_SEGMENT.finditer(text))
    if len(text) > 200 or len(segments) < 2 or not CONNECTOR.fullmatch(LATEX_SEGMENT.sub(" ", text)):
        return None
    return ", ".join(strip_math(next(group for group in match.groups() if group is not None)) for match in segments)


def _last_math_or_number(text: str) -> str | None:
    """Whichever the response ends with: its last LaTeX segment (the right side of its last `=`),
    or a number written after it."""
    segments = list(LATEX_SEGMENT.finditer(text))
    numbers = list(NUMBER.finditer(text))
    if segments and not (numbers and numbers[-1].start() >= segments[-1].end()):
        segment = next(group for group in segments[-1].groups() if group is not None)
        if answer := strip_math(segment if re.search(r",[^{}()]*=", segment) else segment.rsplit("=", 1)[-1]):
            return answer  # `x = 2 + 3 = 5` ends in `5`; `AB=4, CD=5` stays a list
    return numbers[-1].group(0).strip() if numbers else None


def reference_answer(solution: str) -> str:
    """The reference answer of a solution: after its last `####` (GSM8K), else its last
    `\\boxed{}` (MATH), else the answer a long solution states, else the text itself. A plain
    number loses its thousands separators (`1,234` -> `1234`); tuples, intervals and sets keep
    their commas."""
    if "####" in solution:
        answer = strip_math(solution.rsplit("####", 1)[-1])
    elif boxed := last_boxed(solution):
        answer = strip_math(boxed)
    elif _is_bare_answer(solution):
        answer = strip_math(solution)
    else:
        answer = extract_answer(solution) or solution.strip()
    return answer.replace(",", "") if THOUSANDS.fullmatch(answer) else answer


def unboxed(text: str) -> str:
    """`\\boxed{x}` replaced by `x` everywhere."""
    while match := BOXED.search(text):
        content = _braced(text, match.end() - 1)
        if content is None:
            return text[:match.start()] + text[match.end():]
        text = text[:match.start()] + content + text[match.end() + len(content) + 1:]
    return text
