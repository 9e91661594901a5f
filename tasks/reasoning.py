"""Reasoning traces: a thinking model's trace (`<think>...</think>`) told apart from its answer,
so that only the answer is graded and a trace that never ended gives no answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORCED_LEAD_IN = "The final answer is \\boxed{"  # what budget forcing writes after closing a trace (s1)


@dataclass(frozen=True)
class Split:
    reasoning: str | None  # the trace; None when the text has none
    answer: str  # what follows the trace (all of the text when there is none)
    complete: bool | None  # whether the trace ended; None without a trace


def opening(marker: str) -> str | None:
    """The tag that opens a trace ended by `marker` (`<think>` for `</think>`), where there is one."""
    return "<" + marker[2:] if marker.startswith("</") else None


def split_reasoning(text: str, *, marker: str = "</think>", thinking: str = "auto") -> Split:
    """The trace and the answer of a response. A trace is what comes before `marker`; a text
    without the marker is an unended trace when it starts with the opening tag or thinking was
    asked for (`on`: templates such as DeepSeek-R1's open the trace in the prompt), else an answer."""
    tag = opening(marker)
    before, found, after = text.partition(marker)
    if not found and thinking != "on" and not (tag and text.lstrip().startswith(tag)):
        return Split(None, text, None)
    trace = before.strip()
    if tag and trace.startswith(tag):
        trace = trace[len(tag):].strip()
    return Split(trace, after.strip(), bool(found))


def joined(reasoning: str | None, answer: str, *, marker: str = "</think>") -> str:
    """A trace and its answer as one text again (as the model wrote them), for training data."""
    if reasoning is None:
        return answer
    return f"{opening(marker) or ''}\n{reasoning}\n{marker}\n\n{answer}".lstrip()


def template_options(thinking: str) -> dict[str, Any]:
    """What a chat template is told of thinking: `enable_thinking` for on/off, nothing for auto."""
    return {} if thinking == "auto" else {"enable_thinking": thinking == "on"}


def reasoning_tokens(split: Split, *, text: str, tokens: int) -> int | None:
    """The trace's share of an answer's tokens, by its share of the characters: for the answers
    whose trace's tokens no engine counted (a server's answer not streamed, a trace ended before
    the checkpoint its answer went on from)."""
    if split.reasoning is None:
        return None
    return round(tokens * len(split.reasoning) / len(text)) if text else 0
