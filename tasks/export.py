"""Results out, in forms people train on: rows, or chat messages for supervised fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.errors import UserError
from tasks.progress import in_chunks
from tasks.prompts import render
from tasks.store.models import Item, Result

EXPORT_CHUNK = 10_000  # rows between two progress updates
PROVENANCE = ("engine", "model", "prompt", "prompt_hash", "sampling")


def result_rows(items: list[Item], *, only_correct: bool = False, stage: int | None = None) -> list[dict[str, Any]]:
    """One row per answered item, filtered, with how the answer was made."""
    rows = []
    for item in items:
        result = item.result
        if item.status != "done" or result is None or (only_correct and not result.correct) or (
                stage is not None and item.stage != stage):
            continue
        rows.append({"question_id": item.question_id, "sample": item.sample, "stage": item.stage,
                     "question": item.question, "reference": item.reference, "response": result.response,
                     "predicted": result.predicted, "correct": result.correct, "tokens": result.tokens,
                     "worker": result.worker or item.worker, **{key: getattr(result, key) for key in PROVENANCE}})
    return rows


def sft_rows(items: list[Item], *, per_question: int = 1, stage: int | None = None,
             refine_conversations: bool = False) -> list[dict[str, Any]]:
    """Chat examples of correct answers: per question the `per_question` best, best = fewest tokens
    (characters where a count is missing), identical responses kept once. First attempts are
    (user: question, assistant: answer); refine rounds only when asked, as the conversation they
    answered (question, the wrong attempt, the retry prompt, the answer)."""
    wanted = {item.stage for item in items} if refine_conversations else {0}
    answers = [(item, item.result) for item in items if item.status == "done" and item.result is not None
               and item.result.correct and item.stage in wanted and (stage is None or item.stage == stage)]
    best: dict[str, list[tuple[Item, Result]]] = {}
    for item, result in sorted(answers, key=lambda pair: (pair[0].question_id, pair[1].tokens or len(pair[1].response),
                                                          len(pair[1].response))):
        chosen = best.setdefault(item.question_id, [])
        if len(chosen) < per_question and all(result.response.strip() != other.response.strip() for _, other in chosen):
            chosen.append((item, result))
    return [{"question_id": item.question_id, "stage": item.stage, "messages": _conversation(item, result)}
            for chosen in best.values() for item, result in chosen]


def _conversation(item: Item, result: Result) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": item.question}]
    if item.stage > 0 and item.previous:
        messages += [{"role": "assistant", "content": item.previous}, {"role": "user", "content": render("retry")}]
    return [*messages, {"role": "assistant", "content": result.response}]


def write_rows(rows: list[dict[str, Any]], out: Path) -> str:
    """`.jsonl` or `.parquet` by extension; a path without one becomes a HF `datasets` folder."""
    if out.suffix == ".jsonl":
        with out.open("w", encoding="utf-8") as file:
            for chunk in in_chunks(rows, size=EXPORT_CHUNK, what=f"writing {out.name}"):
                file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in chunk)
        return "jsonl"
    import datasets

    data = datasets.Dataset.from_list(rows)
    if out.suffix == ".parquet":
        data.to_parquet(str(out))
        return "parquet"
    data.save_to_disk(str(out))
    return "datasets folder"


def push_to_hub(rows: list[dict[str, Any]], repo_id: str) -> None:
    import datasets

    try:
        datasets.Dataset.from_list(rows).push_to_hub(repo_id)
    except Exception as error:  # offline, no token, no permission: all mean "not pushed"
        raise UserError(f"Could not push to the hub as {repo_id!r}: {str(error).splitlines()[0][:300]}. "
                        "Log in with `huggingface-cli login` (or set HF_TOKEN) on a machine that is online.") from error
