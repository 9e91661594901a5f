"""Results out, in forms people train on: rows, or chat messages for supervised fine-tuning."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tasks.errors import UserError
from tasks.grading.extract import stated_answer
from tasks.progress import in_chunks
from tasks.reasoning import joined
from tasks.store.models import Item, Result
from tasks.worker.chat import conversation

EXPORT_CHUNK = 10_000  # rows between two progress updates


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
                     "reasoning": result.reasoning, "reasoning_complete": result.reasoning_complete,
                     "thinking_forced": result.thinking_forced, "predicted": result.predicted,
                     "correct": result.correct, "tokens": result.tokens,
                     "seed": result.seed,
                     "worker": result.worker or item.worker, **result.provenance()})
    return rows


@dataclass(frozen=True)
class SftFilters:
    """What a training example must pass, as NeMo-Skills filters SFT data."""

    max_chars: int | None = None  # longer solutions are dropped
    max_repeated_lines: int = 4  # a solution repeating a line (of over 20 characters) more often is dropped (a loop)
    similarity: float = 0.95  # a solution this similar to one kept for its question is dropped (difflib ratio)

    def reason_to_drop(self, response: str) -> str | None:
        if stated_answer(response) is None:
            return "no final answer"
        if self.max_chars and len(response) > self.max_chars:
            return "too long"
        lines = Counter(line.strip() for line in response.splitlines() if len(line.strip()) > 20)  # not `\\]`
        if lines and max(lines.values()) > self.max_repeated_lines:
            return "repeated lines"
        return None


@dataclass
class Selection:
    """Rows to write, and how many answers each filter dropped."""

    rows: list[dict[str, Any]]
    dropped: Counter[str] = field(default_factory=Counter)


def best_correct(items: list[Item], *, per_question: int, stage: int | None, refine_conversations: bool,
                 filters: SftFilters) -> tuple[dict[str, list[tuple[Item, Result]]], Counter[str]]:
    """Per question, up to `per_question` correct answers that pass the filters, best = fewest
    tokens (characters where a count is missing), near-duplicates of a kept one left out."""
    wanted = {item.stage for item in items} if refine_conversations else {0}
    answers = [(item, item.result) for item in items if item.status == "done" and item.result is not None
               and item.result.correct and item.stage in wanted and (stage is None or item.stage == stage)]
    best: dict[str, list[tuple[Item, Result]]] = {}
    dropped: Counter[str] = Counter()
    for item, result in sorted(answers, key=lambda pair: (pair[0].question_id, pair[1].tokens or len(pair[1].response),
                                                          len(pair[1].response))):
        chosen = best.setdefault(item.question_id, [])
        if len(chosen) >= per_question:
            continue
        text = assistant_text(result)
        forced = "trace closed at the thinking budget" if result.thinking_forced else None
        reason = forced or filters.reason_to_drop(text) or next(
            ("near-duplicate" for _, kept in chosen if similar(assistant_text(kept), text, filters.similarity)), None)
        if reason:
            dropped[reason] += 1
        else:
            chosen.append((item, result))
    return best, dropped


def assistant_text(result: Result) -> str:
    """What the model wrote, as a training example holds it: its reasoning trace (if any), then the answer."""
    marker = (result.sampling or {}).get("thinking_marker") or "</think>"
    return joined(result.reasoning, result.response, marker=marker)


def similar(a: str, b: str, threshold: float) -> bool:
    a, b = " ".join(a.split()), " ".join(b.split())
    return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold


def fair_share(groups: list[list[dict[str, Any]]], max_rows: int | None) -> list[dict[str, Any]]:
    """Up to `max_rows` rows taken round-robin over the questions (the same number from each where
    possible), in the questions' order."""
    rows = [group[index] for index in range(max(map(len, groups), default=0)) for group in groups if index < len(group)]
    kept = rows[:max_rows] if max_rows else rows
    order = {id(row): position for position, row in enumerate(row for group in groups for row in group)}
    return sorted(kept, key=lambda row: order[id(row)])


def sft_rows(items: list[Item], *, per_question: int = 1, stage: int | None = None, refine_conversations: bool = False,
             filters: SftFilters = SftFilters(), max_rows: int | None = None) -> Selection:
    """Chat examples of correct answers (`best_correct`). First attempts are (user: question,
    assistant: answer); refine rounds only when asked, as the conversation they answered
    (question, the wrong attempt, the retry prompt, the answer)."""
    best, dropped = best_correct(items, per_question=per_question, stage=stage,
                                 refine_conversations=refine_conversations, filters=filters)
    groups = [[{"question_id": item.question_id, "stage": item.stage,
                "messages": [*conversation(item, item.question),
                             {"role": "assistant", "content": assistant_text(result)}]}
               for item, result in chosen] for chosen in best.values()]
    return Selection(fair_share(groups, max_rows), dropped)


def preference_rows(items: list[Item], *, per_question: int = 1, filters: SftFilters = SftFilters(),
                    max_rows: int | None = None) -> Selection:
    """Pairs for DPO, in TRL's conversational form: per question up to `per_question` pairs of a
    correct first attempt (chosen, best first, filtered) and a wrong one (rejected)."""
    best, dropped = best_correct(items, per_question=per_question, stage=0, refine_conversations=False, filters=filters)
    wrong: dict[str, list[Result]] = {}
    for item in items:
        wrong_answer = item.result and not item.result.correct and item.result.response
        if item.stage == 0 and item.status == "done" and item.result and wrong_answer:
            wrong.setdefault(item.question_id, []).append(item.result)
    groups = [[{"question_id": item.question_id, "prompt": [{"role": "user", "content": item.question}],
                "chosen": [{"role": "assistant", "content": assistant_text(result)}],
                "rejected": [{"role": "assistant", "content": assistant_text(bad)}]}
               for (item, result), bad in zip(chosen, wrong.get(question, []))] for question, chosen in best.items()]
    return Selection(fair_share(groups, max_rows), dropped)


def dataset_card(*, run: str, kind: str, rows: int, questions: int, way: dict[str, Any] | None, accuracy: float,
                 filters: SftFilters, dropped: Counter[str], per_question: int, max_rows: int | None,
                 decontamination: Sequence[str] = ()) -> str:
    """The card written beside an export: what the data is, how it was made and filtered."""
    made = "responses brought from elsewhere" if way is None else (
        f"model `{way['model']['model']}` with {way['engine']}, prompt `{way['prompt']}`, sampling {way['sampling']}")
    return "\n".join([
        f"# fleetgen export of run `{run}`", "",
        f"- format: {kind}; {rows:,} rows from {questions:,} questions (up to {per_question} per question"
        f"{f', at most {max_rows:,} rows, taken evenly across questions' if max_rows else ''})",
        f"- made with: {made}",
        f"- accuracy of the run at the first attempt: {accuracy:.1%}",
        f"- filters: a final answer the grader reads, at most {filters.max_repeated_lines} repeats of a line, "
        f"{f'at most {filters.max_chars:,} characters, ' if filters.max_chars else ''}near-duplicates "
        f"(similarity >= {filters.similarity}) of a kept answer dropped",
        f"- answers dropped by the filters: {dropped_text(dropped) or 'none'}", *decontamination, ""])


def dropped_text(dropped: Counter[str]) -> str:
    """How many answers each filter dropped, e.g. "near-duplicate 2, too long 1"."""
    return ", ".join(f"{reason} {count}" for reason, count in sorted(dropped.items()))


def card_path(out: Path) -> Path:
    """Where the dataset card goes: README.md in a datasets folder, else `<name>.card.md` beside the file."""
    return out / "README.md" if not out.suffix else out.with_suffix(".card.md")


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


def push_to_hub(rows: list[dict[str, Any]], repo_id: str, card: str | None = None) -> None:
    """The rows as a hub dataset; the dataset card becomes its README's text (the metadata block
    `datasets` writes there, which the hub's viewer reads, is kept)."""
    import datasets
    from huggingface_hub import DatasetCard

    try:
        datasets.Dataset.from_list(rows).push_to_hub(repo_id)
        if card is not None:
            readme = DatasetCard.load(repo_id)
            readme.text = card
            readme.push_to_hub(repo_id, commit_message="fleetgen dataset card")
    except Exception as error:  # offline, no token, no permission: all mean "not pushed"
        raise UserError(f"Could not push to the hub as {repo_id!r}: {str(error).splitlines()[0][:300]}. "
                        "Log in with `huggingface-cli login` (or set HF_TOKEN) on a machine that is online.") from error
