"""Tool-integrated reasoning for any engine: the model writes a ```python block, the sandbox runs
it, its output is appended as an ```output block and the answer goes on from there, up to
`max_executions` times per item. Wraps an engine behind the same interface: an item whose code
is running leaves the engine (the other requests keep generating) and comes back as a new
request, its conversation ending with the assistant's answer so far, to be continued."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Iterator

from tasks.config import SamplingConfig
from tasks.engines import Engine, Feeder, Finished, Generation, Request
from tasks.engines.continuing import ContinuingFeeder, continued, so_far_text
from tasks.engines.devices import cpu_cores
from tasks.sandbox import Execution, SandboxPolicy, execute

CODE_BLOCK = re.compile(r"```python[ \t]*\n(.*?)```", re.DOTALL)
STOP = ("```output",)  # where a model trained on tool use stops for the output (ToRA, Qwen2.5-Math)
MAX_OUTPUT_CHARS = 1000  # of each execution's output shown to the model


@dataclass
class Transcript:
    """One item's answer so far, over its rounds of generation and execution."""

    request: Request
    budget: int  # tokens for all of its rounds together
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    executions: int = 0
    errors: int = 0
    execution_seconds: float = 0.0
    trace_tokens: int | None = None  # of its tokens, the trace's, where the engine counted them

    @property
    def spent(self) -> bool:
        return self.tokens >= self.budget

    def continuation(self) -> Request:
        """The next request: the answer so far continued, for what is left of its token budget."""
        seed = None if self.request.seed is None else (self.request.seed + self.executions) % 2**31  # a new draw
        return continued(self.request, self.text, stop=STOP, seed=seed, max_new_tokens=self.budget - self.tokens)

    def generation(self, last: Generation) -> Generation:
        """The whole answer, once `last` (its final round) ended without code to run."""
        text = self.text.rstrip() if so_far_text(self.request) else self.text.strip()  # going on: its leading space
        return Generation(text, tokens=self.tokens, seconds=self.seconds,
                          finish_reason="length" if self.spent else last.finish_reason,
                          code_executions=self.executions, code_errors=self.errors,
                          code_seconds=round(self.execution_seconds, 3), reasoning_tokens=self.trace_tokens,
                          seed=self.request.seed if last.seed is not None else None)


def first_code(text: str) -> tuple[str, int] | None:
    """The first complete ```python block's code and where it ends; None when there is none."""
    match = CODE_BLOCK.search(text)
    return (match.group(1), match.end()) if match else None


def output_block(output: str, error: str | None) -> str:
    """What the model reads after its code: the printed output (its end), or the error's last line."""
    shown = output.strip()[-MAX_OUTPUT_CHARS:] if error is None else error
    return f"\n```output\n{shown}\n```\n"


class CodeLoopEngine:
    """`engine` with code execution: each answer's first ```python block (what follows it is
    dropped: a model without tool training goes on to imagine the output) runs in the sandbox,
    executions of a device's items in parallel up to the machine's cores."""

    def __init__(self, engine: Engine, *, max_executions: int = 6, policy: SandboxPolicy = SandboxPolicy()):
        self.engine, self.max_executions, self.policy = engine, max_executions, policy
        self.name, self.device, self.label = engine.name, engine.device, engine.label

    def run(self, feeder: Feeder, sampling: SamplingConfig) -> Iterator[list[Finished]]:
        def open_transcript(request: Request) -> Transcript:
            return Transcript(request, budget=request.max_new_tokens or sampling.max_new_tokens)

        loop = ContinuingFeeder(feeder, open=open_transcript, first=lambda request: replace(request, stop=STOP),
                                unsettled=lambda text: "```python" in text)  # a checkpoint keeps no code unrun
        with ThreadPoolExecutor(cpu_cores(), thread_name_prefix=f"sandbox-{self.label}") as pool:
            for group in self.engine.run(loop, sampling):
                finished, answered = loop.received(group)
                for key, transcript, answer in answered:
                    code = first_code(answer.text)
                    before, marker = transcript.tokens, sampling.thinking_marker
                    transcript.tokens += answer.tokens
                    transcript.seconds += answer.seconds
                    if code is not None and transcript.executions < self.max_executions and not transcript.spent:
                        kept, runs = answer.text[:code[1]], code[0]
                    else:
                        kept, runs = answer.text, None
                    if transcript.trace_tokens is None and answer.reasoning_tokens is not None and marker in kept:
                        transcript.trace_tokens = before + answer.reasoning_tokens
                    transcript.text += kept
                    if runs is None:
                        finished.append((loop.close(key).request, transcript.generation(answer)))
                        continue
                    transcript.executions += 1
                    pool.submit(self._execute, loop, transcript, runs)
                yield finished

    def _execute(self, loop: ContinuingFeeder[Transcript], transcript: Transcript, code: str) -> None:
        try:
            execution = execute(code, self.policy)
        except Exception as error:  # the sandbox itself failed (no room for its folder): the model reads why
            execution = Execution(output="", error=f"the sandbox could not run it ({type(error).__name__}: {error})",
                                  seconds=0.0)
        transcript.errors += execution.error is not None
        transcript.execution_seconds += execution.seconds
        transcript.text += output_block(execution.output, execution.error)
        loop.back(transcript.continuation())

    def close(self) -> None:
        self.engine.close()
