"""The conversation each item is asked in, and the prompt provenance recorded with its answer."""

from __future__ import annotations

from tasks.engines import Prompt
from tasks.prompts import prompt_hash, render
from tasks.store.models import Item

RETRY_TEMPLATE = "retry"


def item_messages(item: Item, template: str) -> Prompt:
    """The question in `template`; for a refine round, also the previous response and the retry
    prompt (a multi-turn chat, joined into one text by engines without a chat template)."""
    messages = [{"role": "user", "content": render(template, question=item.question)}]
    if item.stage > 0 and item.previous:
        messages += [{"role": "assistant", "content": item.previous},
                     {"role": "user", "content": render(RETRY_TEMPLATE)}]
    return messages


def prompt_provenance(item: Item, template: str) -> dict[str, str]:
    """The prompt's name and a hash of its text(s), as stored with the answer."""
    names = [template, RETRY_TEMPLATE] if item.stage > 0 and item.previous else [template]
    return {"prompt": "+".join(names), "prompt_hash": prompt_hash(*names)}
