"""An LLM judge for the answers the rule-based grader cannot read: a model is asked whether the
response's final answer equals the reference, and its verdict is kept beside the rules' one."""

from __future__ import annotations

import logging
import re
from typing import Any

from tasks.config import JudgeConfig, SamplingConfig
from tasks.engines import Engine, Generation, Request, answer_all, create_engine
from tasks.engines.devices import choose_engine, engine_devices
from tasks.prompts import render
from tasks.store.models import Item

RESPONSE_CHARS = 4000  # the end of a long response, where its answer is


def judge_engine(config: JudgeConfig) -> Engine:
    """The judge's one model copy (or endpoint), on the first of its devices."""
    engine, chosen = choose_engine(config.engine, devices=config.devices)
    device, label = engine_devices(engine, config.devices)[0]
    logging.getLogger("fleetgen").info(f"judge: {config.model.model} with {chosen} on {label}")
    return create_engine(engine=engine, model=config.model, device=device, label=label,
                         batch_size=config.batch_size, context_tokens=config.sampling.context_tokens())


def to_judge(items: list[Item]) -> list[Item]:
    """Answers whose final answer the rules could not read, not judged yet."""
    return [item for item in items if item.status == "done" and item.result is not None
            and item.result.predicted is None and item.result.judge is None]


def verdict(reply: str) -> bool | None:
    """The judge's yes or no (None when it said neither)."""
    word = re.match(r"\W*(\w+)", reply.lower())
    return {"yes": True, "no": False}.get(word.group(1)) if word else None


def judge_items(engine: Engine, items: list[Item], sampling: SamplingConfig, model: str) -> dict[str, dict[str, Any]]:
    """Each answered item's judgement: {correct (None: undecided), model, reply}."""
    requests = [Request(key=item.id, prompt=render("judge", question=item.question, reference=item.reference,
                                                   response=response_end(item)))
                for item in items]
    replies = answer_all(engine, requests, sampling)
    return {item.id: {"correct": verdict(reply.text) if isinstance(reply, Generation) else None, "model": model,
                      "reply": reply.text[:200] if isinstance(reply, Generation) else
                      f"{type(reply).__name__}: {reply}"[:200]}
            for item, reply in zip(items, replies)}


def response_end(item: Item) -> str:
    """The end of the item's response, where its final answer is (what the judge reads)."""
    return (item.result.response if item.result else "")[-RESPONSE_CHARS:]
