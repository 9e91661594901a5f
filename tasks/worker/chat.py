"""The conversation each item is asked in, and the prompt provenance recorded with its answer."""

from __future__ import annotations

import functools
import logging
from typing import TypedDict

from tasks.engines import Prompt
from tasks.errors import UserError
from tasks.masking import mask_solution
from tasks.prompts import prompt_hash, render, template_text
from tasks.store import Store
from tasks.store.models import Item

log = logging.getLogger("fleetgen")
RETRY_TEMPLATE = "retry"
LONGEST_PROMPTS = 32  # the longest questions (in characters) whose prompts are measured in tokens


def item_messages(item: Item, template: str) -> Prompt:
    """The question in `template` (with its masked reference solution where the template shows
    one); for a refine round, also the previous response and the retry prompt (a multi-turn chat,
    joined into one text by engines without a chat template)."""
    fields = {"question": item.question}
    if shows_solution(template):
        fields["solution"] = mask_solution((item.metadata or {}).get("solution") or "", item.reference)
    return conversation(item, render(template, **fields))


def conversation(item: Item, asked: str) -> list[dict[str, str]]:
    """The turns an item is answered after: `asked` (the question as put to the model); for a
    refine round, then the previous response and the retry prompt."""
    messages = [{"role": "user", "content": asked}]
    if item.stage > 0 and item.previous:
        messages += [{"role": "assistant", "content": item.previous},
                     {"role": "user", "content": render(RETRY_TEMPLATE)}]
    return messages


@functools.cache
def shows_solution(template: str) -> bool:
    """Whether the template shows the reference solution (read once: asked for every item)."""
    return "{solution}" in template_text(template)


def check_solutions(store: Store, runs: list[str], template: str) -> None:
    """UserError before any model loads when the template shows reference solutions that a run's
    items do not keep."""
    lacking = [run for run in runs if shows_solution(template) and not store.run_config(run).get("solutions")]
    if lacking:
        raise UserError(f"--prompt {template} shows the model each question's reference solution (masked), but run(s) "
                        f"{', '.join(lacking)} were seeded without them: seed a run with --solutions (gsm8k, math, or "
                        "a file whose --answer-field holds whole solutions) and work on that one.")


class PromptProvenance(TypedDict):
    prompt: str  # the template's name (+retry for a refine round)
    prompt_hash: str  # a hash of their texts: an edited template of the same name is told apart


def prompt_provenance(item: Item, template: str) -> PromptProvenance:
    """The prompt's name and a hash of its text(s), as stored with the answer."""
    names = [template, RETRY_TEMPLATE] if item.stage > 0 and item.previous else [template]
    return {"prompt": "+".join(names), "prompt_hash": prompt_hash(*names)}


def longest_prompt(store: Store, runs: list[str], *, model: str, template: str, thinking: str) -> int:
    """Tokens of the longest prompt a started server will be sent (for its context): of the runs'
    items still to answer, the LONGEST_PROMPTS longest in characters, through the model's tokenizer
    and chat template; 0 when the tokenizer cannot be loaded here (the server then says so)."""
    from transformers import AutoTokenizer

    from tasks.engines.hf_model import encode_prompts

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as error:
        log.warning(f"could not load {model}'s tokenizer to measure the prompts ({str(error)[:200]})")
        return 0
    items = [item for run in runs for item in store.longest_prompts(run, LONGEST_PROMPTS)]
    return max(map(len, encode_prompts(tokenizer, [item_messages(item, template) for item in items], thinking)),
               default=0)
