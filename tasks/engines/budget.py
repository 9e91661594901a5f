"""Budget forcing (s1) for any engine: an answer is first generated for at most `thinking_budget`
tokens. One that ends within them is done. One cut off there goes on for at most `answer_budget`
tokens more, continuing the assistant's turn as the code-execution loop does: a trace still
unended is closed first (the marker, then "The final answer is \\boxed{"), and the answer is
marked forced, its trace's tokens counted exactly. Wraps an engine, code execution included. An
answer continued from a checkpoint goes on in the part it was in, with what is left of its budget."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

from tasks.config import SamplingConfig
from tasks.engines import Engine, Feeder, Finished, Generation, Request
from tasks.engines.continuing import ContinuingFeeder, continued, so_far_text
from tasks.reasoning import FORCED_LEAD_IN


def forced_close(marker: str) -> str:
    """What closes a trace at the budget: the marker and the lead-in to the final answer."""
    return f"\n{marker}\n\n{FORCED_LEAD_IN}"


@dataclass
class Draft:
    """One answer over its two parts: up to the thinking budget, then the answer's."""

    request: Request
    answering: bool = False  # in the second part: past the thinking budget
    forced: bool = False  # the trace was closed at the budget
    text: str = ""
    parts: list[Generation] = field(default_factory=list)
    trace_tokens: int | None = None  # the first part's tokens, where this engine closed the trace after it

    @property
    def tokens(self) -> int:
        return sum(part.tokens for part in self.parts)

    def add(self, part: Generation) -> None:
        self.text += part.text
        self.parts.append(part)

    def generation(self, last: Generation) -> Generation:
        """The whole answer, once `last` (its final part) ended; code executions of both parts added up."""
        ran = [part for part in self.parts if part.code_executions is not None]
        trace = self.trace_tokens if self.trace_tokens is not None else self.parts[0].reasoning_tokens
        return Generation(self.text, tokens=self.tokens, finish_reason=last.finish_reason,
                          seconds=sum(part.seconds for part in self.parts),
                          seed=self.request.seed if last.seed is not None else None,
                          reasoning_tokens=trace, thinking_forced=self.forced,
                          code_executions=sum(part.code_executions or 0 for part in ran) if ran else None,
                          code_errors=sum(part.code_errors or 0 for part in ran) if ran else None,
                          code_seconds=sum(part.code_seconds or 0.0 for part in ran) if ran else None)


class BudgetEngine:
    """`engine` with budget forcing (see the module)."""

    def __init__(self, engine: Engine, *, thinking_budget: int, answer_budget: int):
        self.engine, self.thinking_budget, self.answer_budget = engine, thinking_budget, answer_budget
        self.name, self.device, self.label = engine.name, engine.device, engine.label

    def resumed_answering(self, request: Request) -> bool:
        """Whether a request continued from a checkpoint is past the thinking budget: in the answer's part."""
        return request.tokens_so_far > self.thinking_budget

    def first_part(self, request: Request) -> Request:
        """A new request's first part: what is left of the thinking budget, or (continued from a
        checkpoint past it) of the answer's."""
        budget = self.thinking_budget + (self.answer_budget if self.resumed_answering(request) else 0)
        return replace(request, max_new_tokens=max(1, budget - request.tokens_so_far))

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        closing = forced_close(sampling.thinking_marker)

        def open_draft(request: Request) -> Draft:
            answering = self.resumed_answering(request)
            return Draft(request, answering=answering, forced=answering and closing in so_far_text(request))

        loop = ContinuingFeeder(feeder, open=open_draft, first=self.first_part)
        for group in self.engine.run(loop, sampling):
            finished, answered = loop.received(group)
            for key, draft, answer in answered:
                draft.add(answer)
                if draft.answering or answer.finish_reason != "length":  # the second part, or ended
                    finished.append((loop.close(key).request, draft.generation(answer)))
                    continue
                draft.answering = True
                if sampling.thinking_marker not in so_far_text(draft.request) + draft.text:  # still thinking
                    draft.forced, draft.trace_tokens = True, draft.tokens
                    draft.text += closing
                seed = None if draft.request.seed is None else (draft.request.seed + 1) % 2**31  # a new draw
                loop.back(continued(draft.request, draft.text, max_new_tokens=self.answer_budget, seed=seed))
            yield finished

    def close(self) -> None:
        self.engine.close()
