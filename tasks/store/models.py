"""What the store holds: work items, the claims that hold them, and the result of answering one."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Collection

STATUSES = ("pending", "running", "done", "failed")
SAMPLING_STATUSES = ("waiting", "cancelled")  # runs seeded with --until-correct: a sample waits for the one before it
TO_ANSWER = ("pending", "running", "waiting")  # items a worker may still be asked to answer
Clock = Callable[[], float]  # what leases are timed with: time.time, or a test's clock
LEASE_EXPIRED = "gave up after %d attempts: the lease expired (the worker died while holding it)"
MIN_LEASE_SECONDS = 10.0  # shorter leases expire under live workers (a batch takes seconds to write)
PROVENANCE = ("engine", "model", "prompt", "prompt_hash", "sampling")  # how an answer was made (Result fields)


@dataclass(kw_only=True)
class Result:
    """What answering one item produced, and how (stored without its empty fields)."""

    response: str  # the answer (after the reasoning trace, where there is one)
    predicted: str | None = None  # the final answer found in the response
    reasoning: str | None = None  # a thinking model's trace, apart from the response (never graded)
    reasoning_tokens: int | None = None  # of `tokens`, those of the trace
    reasoning_complete: bool | None = None  # whether the trace ended (no answer is read from an unended one)
    thinking_forced: bool | None = None  # with --thinking-budget: whether the trace was closed at the budget
    correct: bool = False
    tokens: int | None = None  # generated tokens, the prompt not counted
    seconds: float | None = None  # the item's share of its batch's generation time
    finish_reason: str | None = None  # "stop" (end of sequence) or "length" (hit max_new_tokens)
    worker: str | None = None
    device: str | None = None
    finished: float | None = None  # when it was answered (epoch seconds, the worker's clock)
    code_executions: int | None = None  # with code execution: the code blocks it ran (the response is the
    code_errors: int | None = None  # transcript, output blocks included), how many failed,
    code_seconds: float | None = None  # and how long they ran
    judge: dict[str, Any] | None = None  # an LLM judge's verdict where the rules could not read the answer
    extracted_by: str | None = None  # "llm" when the second pass found the answer
    # provenance: how the answer was made (absent for responses brought from elsewhere)
    engine: str | None = None
    model: dict[str, Any] | None = None  # ModelConfig fields
    prompt: str | None = None  # template name; "<name>+retry" for refine rounds
    prompt_hash: str | None = None  # sha256 of the template text(s), first 16 hex digits
    sampling: dict[str, Any] | None = None  # SamplingConfig fields (`seed`: the base of every sample's own seed)
    seed: int | None = None  # the seed this answer was drawn with, where the engine takes one per sample
    continued_at: list[int] | None = None  # the tokens it had each time another claim continued it from a checkpoint
    texts: dict[str, Any] | None = None  # with --texts: {"shard": path} where response and trace are (tasks/texts/)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}

    def provenance(self) -> dict[str, Any]:
        """How the answer was made: the fields that must agree for answers to be compared or mixed."""
        return {key: getattr(self, key) for key in PROVENANCE}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(**{"response": "", **{f.name: data[f.name] for f in fields(cls) if f.name in data}})


@dataclass(kw_only=True)
class Item:
    """One unit of work: a question to answer once (one sample at one stage)."""

    question_id: str
    question: str
    reference: str
    stage: int = 0
    sample: int = 0
    status: str = "pending"
    result: Result | None = None
    attempts: int = 0
    worker: str | None = None
    token: str | None = None
    lease_expires: float | None = None
    error: str | None = None
    previous: str | None = None  # the response a refine round asks to improve
    metadata: dict[str, Any] | None = None  # what the benchmark says of the question (MATH: level, subject)
    partial: dict[str, Any] | None = None  # a streamed answer's checkpoint (`Checkpoint.to_dict`), until it is done
    id: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """An answer being generated, kept with its item: the text so far, its tokens, and the tokens it
    had each time it was continued before."""

    text: str
    tokens: int
    continued_at: tuple[int, ...] = ()

    def then(self, text: str, tokens: int) -> Checkpoint:
        """This answer so far followed by what its continuation wrote."""
        return Checkpoint(self.text + text, self.tokens + tokens, (*self.continued_at, self.tokens))

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "continued_at": list(self.continued_at)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(text=data["text"], tokens=data["tokens"], continued_at=tuple(data.get("continued_at") or ()))


@dataclass
class Claim:
    """A batch of items held by one worker under one token until the lease expires."""

    token: str
    worker: str
    items: list[Item] = field(default_factory=list)
    run: str = ""

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def only(self, ids: Collection[str]) -> Claim:
        """This claim narrowed to the items with these ids (to give some back, not all)."""
        return Claim(self.token, self.worker, [item for item in self.items if item.id in ids], self.run)


def settling(items: list[Item]) -> tuple[set[str], int | None]:
    """What a write of these items may settle in a run seeded with --until-correct: their
    questions, and N (their metadata carries it; None for other runs)."""
    enough = max(((item.metadata or {}).get("until_correct") or 0 for item in items), default=0) or None
    return {item.question_id for item in items}, enough
