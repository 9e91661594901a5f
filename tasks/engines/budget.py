"""Budget forcing (s1) for any engine: an answer is first generated for at most `thinking_budget`
tokens. One that ends within them is done. One cut off there goes on for at most `answer_budget`
tokens more, continuing the assistant's turn as the code-execution loop does: a trace still
unended is closed first (the marker, then "The final answer is \\boxed{"), and the answer is
marked forced, its trace's tokens counted exactly. Wraps an engine, code execution included."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

from tasks.config import SamplingConfig
from tasks.engines import Engine, Feeder, Finished, Generation, Request
from tasks.engines.continuing import ContinuingFeeder, continued
from tasks.reasoning import FORCED_LEAD_IN


@dataclass
class Draft:
    """One answer over its two parts: up to the thinking budget, then the answer's."""

    request: Request
    text: str = ""
    forced: bool = False  # the trace was closed at the budget (its tokens: the first part's)
    parts: list[Generation] = field(default_factory=list)  # the first part's answer, then the second's

    @property
    def tokens(self) -> int:
        return sum(part.tokens for part in self.parts)

    def add(self, part: Generation) -> None:
        self.text += part.text
        self.parts.append(part)

    def generation(self, last: Generation) -> Generation:
        """The whole answer, once `last` (its final part) ended; code executions of both parts added up."""
        ran = [part for part in self.parts if part.code_executions is not None]
        return Generation(self.text, tokens=self.tokens, finish_reason=last.finish_reason,
                          seconds=sum(part.seconds for part in self.parts),
                          seed=self.request.seed if last.seed is not None else None,
                          reasoning_tokens=self.parts[0].tokens if self.forced else None, thinking_forced=self.forced,
                          code_executions=sum(part.code_executions or 0 for part in ran) if ran else None,
                          code_errors=sum(part.code_errors or 0 for part in ran) if ran else None,
                          code_seconds=sum(part.code_seconds or 0.0 for part in ran) if ran else None)


class BudgetEngine:
    """`engine` with budget forcing (see the module)."""

    def __init__(self, engine: Engine, *, thinking_budget: int, answer_budget: int):
        self.engine, self.thinking_budget, self.answer_budget = engine, thinking_budget, answer_budget
        self.name, self.device, self.label = engine.name, engine.device, engine.label

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        marker = sampling.thinking_marker
        loop = ContinuingFeeder(feeder, open=Draft,
                                first=lambda request: replace(request, max_new_tokens=self.thinking_budget))
        for group in self.engine.run(loop, sampling):
            finished, answered = loop.received(group)
            for key, draft, answer in answered:
                draft.add(answer)
                if len(draft.parts) > 1 or answer.finish_reason != "length":  # the second part, or ended
                    finished.append((loop.close(key).request, draft.generation(answer)))
                    continue
                if marker not in draft.text:  # still thinking at the budget: the trace is closed here
                    draft.forced = True
                    draft.text += f"\n{marker}\n\n{FORCED_LEAD_IN}"
                seed = None if draft.request.seed is None else (draft.request.seed + 1) % 2**31  # a new draw
                loop.back(continued(draft.request, draft.text, max_new_tokens=self.answer_budget, seed=seed))
            yield finished

    def close(self) -> None:
        self.engine.close()
