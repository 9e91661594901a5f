"""Whether a run's questions (and, if asked, its answers) appear in a benchmark's test split, before
anyone trains on them.

Two checks, each recording which test item a question matched:
- word n-grams, as open-r1's `scripts/decontaminate.py` checks: a question sharing any run of `n`
  words (8 by default) with a test question is contaminated. Normalisation: open-r1's (lowercase,
  split on whitespace, punctuation kept on its words) after Unicode NFKC; dropping punctuation
  flagged more unrelated MATH questions (bench/decontamination.py). A test question shorter than
  `n` words matches a question only as its whole normalised text.
- optionally, nearest neighbours by sentence embedding (mean-pooled, cosine), each of the `top_k`
  nearest test questions confirmed by a judge model asked "same problem?" in both orders, as
  NeMo-Skills' contamination pipeline does; a yes in either order is a match.
The test sets: the test split of every benchmark that is shipped or found in `--data-dir`, and
any `--against` JSONL file (a `question` field)."""

from __future__ import annotations

import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tasks.benchmarks import ADAPTERS, load_rows, resolve_source
from tasks.benchmarks.files import read_rows
from tasks.config import DecontaminateConfig
from tasks.errors import UserError
from tasks.store.models import Item

NGRAM = 8


@dataclass(frozen=True)
class HeldOutQuestion:
    test_set: str  # e.g. gsm8k/test, or an --against file's name
    test_id: str
    question: str


def words(text: str) -> list[str]:
    return unicodedata.normalize("NFKC", text).lower().split()


def held_out_questions(*, benchmarks: Iterable[str] = tuple(ADAPTERS), data_dir: str | None = None,
                       against: Iterable[str] = ()) -> tuple[list[HeldOutQuestion], list[str]]:
    """The test questions of `benchmarks` whose test split is here, and of the `against` files;
    and the benchmarks asked for whose test split is not here (not shipped, not in `data_dir`)."""
    found, missing = [], []
    for name, adapter in ADAPTERS.items():
        if "test" not in adapter.FILES or name not in benchmarks:
            continue
        try:
            source = resolve_source(name, "test", data_dir)
        except UserError:
            missing.append(name)
            continue
        found += [HeldOutQuestion(f"{name}/test", row.question_id, row.question) for row in load_rows(source)]
    for path in against:
        source = resolve_source(path, "test")
        for index, (line, row) in enumerate(read_rows(source)):
            if not isinstance(row.get("question"), str):
                raise UserError(f"Row {line} of {path} has no 'question' text: a test set for --against is a JSONL "
                                "file with a question field on every line.")
            found.append(HeldOutQuestion(source.name, str(row.get("id", f"{source.name}/{index}")), row["question"]))
    return found, missing


class NgramIndex:
    """The test questions' word n-grams (and their whole texts where shorter than n words);
    `tokens` splits a text into words (`words` unless a benchmark compares another way)."""

    def __init__(self, tests: list[HeldOutQuestion], n: int = NGRAM, tokens: Callable[[str], list[str]] = words):
        self.n, self.tests, self.tokens = n, tests, tokens
        self.grams: dict[str, int] = {}
        self.short: dict[str, int] = {}
        for index, test in enumerate(tests):
            text = tokens(test.question)
            if len(text) < n:
                self.short.setdefault(" ".join(text), index)
            for gram in self._grams(text):
                self.grams.setdefault(gram, index)

    def _grams(self, text: list[str]) -> Iterable[str]:
        return (" ".join(text[start:start + self.n]) for start in range(len(text) - self.n + 1))

    def match(self, text: str) -> tuple[HeldOutQuestion, str] | None:
        """The first test question `text` shares an n-gram with, and that n-gram."""
        tokens = self.tokens(text)
        if (whole := " ".join(tokens)) in self.short:
            return self.tests[self.short[whole]], whole
        for gram in self._grams(tokens):
            if gram in self.grams:
                return self.tests[self.grams[gram]], gram
        return None


def match_record(test: HeldOutQuestion, check: str, evidence: str) -> dict[str, Any]:
    return {"test_set": test.test_set, "test_id": test.test_id, "check": check, "evidence": evidence[:300]}


def ngram_matches(index: NgramIndex, questions: dict[str, str],
                  answers: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """question_id -> its match, for every question (or, with `answers`, one of its answers) that
    shares an n-gram with a test question."""
    matches = {}
    for question_id, question in questions.items():
        if found := index.match(question):
            matches[question_id] = match_record(found[0], f"{index.n}-gram", found[1])
            continue
        for answer in (answers or {}).get(question_id, []):
            if found := index.match(answer):
                matches[question_id] = match_record(found[0], f"{index.n}-gram in an answer", found[1])
                break
    return matches


def embed(texts: list[str], model_path: str, *, batch_size: int = 64) -> Any:
    """Unit-length sentence embeddings (mean of the last hidden states over the real tokens)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer, model = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise UserError(f"Cannot load the embedding model {model_path!r}: {str(error).splitlines()[0][:300]}. Pass a "
                        "local folder or a hub id of a sentence-embedding model (e.g. "
                        "sentence-transformers/multi-qa-MiniLM-L6-cos-v1).") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
    return torch.cat(vectors) if vectors else torch.empty(0)


def nearest(questions: dict[str, str], tests: list[HeldOutQuestion], model_path: str,
            top_k: int) -> dict[str, list[int]]:
    """question_id -> the indexes of its `top_k` nearest test questions by embedding."""
    ids = list(questions)
    if not ids or not tests:
        return {}
    scores = embed([questions[i] for i in ids], model_path) @ embed([t.question for t in tests], model_path).T
    top = scores.topk(min(top_k, len(tests)), dim=1).indices.tolist()
    return dict(zip(ids, top))


def judge_matches(engine: Any, sampling: Any, questions: dict[str, str], tests: list[HeldOutQuestion],
                  candidates: dict[str, list[int]], model: str) -> dict[str, dict[str, Any]]:
    """question_id -> its match, where the judge says a candidate is the same problem in either order."""
    from tasks.engines import Generation, Request, answer_all
    from tasks.judge import verdict
    from tasks.prompts import render

    pairs = [(question_id, index) for question_id, indexes in candidates.items() for index in indexes]
    requests = [Request(key=f"{n}-{order}", prompt=render("same_problem", first=first, second=second))
                for n, (question_id, index) in enumerate(pairs)
                for order, (first, second) in enumerate([(questions[question_id], tests[index].question),
                                                         (tests[index].question, questions[question_id])])]
    replies = answer_all(engine, requests, sampling) if requests else []
    matches: dict[str, dict[str, Any]] = {}
    for n, (question_id, index) in enumerate(pairs):
        both = replies[2 * n:2 * n + 2]
        if question_id not in matches and any(isinstance(r, Generation) and verdict(r.text) for r in both):
            matches[question_id] = match_record(tests[index], f"embedding, confirmed by {model}",
                                                tests[index].question)
    return matches


def check_run(items: list[Item], config: DecontaminateConfig) -> dict[str, Any]:
    """The run's decontamination report: its questions (and with `answers`, its answers) checked by
    n-grams, then (with `embedding_model`) the rest by embedding, each candidate confirmed by the judge."""
    started = time.monotonic()
    questions = {item.question_id: item.question for item in items if item.stage == 0}
    answers: dict[str, list[str]] = {}
    for item in items:
        if config.answers and item.status == "done" and item.result is not None:  # the trace too: it is trained on
            answers.setdefault(item.question_id, []).extend(filter(None, (item.result.reasoning, item.result.response)))
    tests, missing = held_out_questions(benchmarks=config.benchmarks, data_dir=config.data_dir,
                                    against=config.against_files)
    matches = ngram_matches(NgramIndex(tests, config.ngram), questions, answers)
    method: dict[str, Any] = {"ngram": config.ngram, "answers": config.answers,
                              "normalisation": "NFKC, lowercase, split on whitespace"}
    if config.embedding_model:
        from tasks.judge import judge_engine

        rest = {question_id: question for question_id, question in questions.items() if question_id not in matches}
        candidates = nearest(rest, tests, config.embedding_model, config.top_k)
        engine = judge_engine(config)
        try:
            matches.update(judge_matches(engine, config.sampling, rest, tests, candidates, config.model.model))
        finally:
            engine.close()
        method.update(embedding_model=config.embedding_model, top_k=config.top_k, judge_model=config.model.model)
    return report(method=method, tests=tests, missing=missing, checked=len(questions), matches=matches,
                  seconds=time.monotonic() - started)


def report(*, method: dict[str, Any], tests: list[HeldOutQuestion], missing: list[str], checked: int,
           matches: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """What the store keeps for a run: the method, the test sets checked (questions in each), the
    ones not available, and every contaminated question with its match."""
    test_sets = [{"name": name, "questions": count} for name, count in Counter(t.test_set for t in tests).items()]
    return {"method": method, "test_sets": test_sets, "not_checked": missing, "checked": checked,
            "contaminated": len(matches), "seconds": round(seconds, 2), "checked_at": time.time(),
            "matches": [{"question_id": question_id, **match} for question_id, match in sorted(matches.items())]}


def contaminated_ids(stored: dict[str, Any] | None) -> set[str]:
    return {match["question_id"] for match in (stored or {}).get("matches", [])}


def without_contaminated(items: list[Item], stored: dict[str, Any] | None, *,
                         keep: bool = False) -> tuple[list[Item], int, int]:
    """The items of the questions a check did not find in a test set (all of them with `keep`),
    and how many questions and answers were left out."""
    left_out = set() if keep else contaminated_ids(stored)
    answers = sum(item.status == "done" for item in items if item.question_id in left_out)
    return [item for item in items if item.question_id not in left_out], len(left_out), answers


def seeded_from_a_test_split(run_config: dict[str, Any]) -> bool:
    """A run seeded from a benchmark's or a hub dataset's test split (a user's own file is not)."""
    dataset = str(run_config.get("dataset", ""))
    from_hub = "/" in dataset and not dataset.endswith((".jsonl", ".json"))
    return run_config.get("split") == "test" and (dataset in ADAPTERS or from_hub)


def refuse_a_test_split(run: str, run_config: dict[str, Any], *, kind: str, allowed: bool) -> None:
    """Training data from a test split makes that benchmark's scores meaningless: UserError unless allowed."""
    if seeded_from_a_test_split(run_config) and not allowed:
        raise UserError(
            f"Run {run!r} was seeded from the test split of {run_config.get('dataset')}: exporting it as {kind} "
            "training data would train on the questions that benchmark is scored on, so its scores (and those of "
            "every model trained on it) would mean nothing. Seed a training run from a train split (e.g. --dataset "
            "gsm8k --split train), export this one as --format rows for analysis, or pass --allow-test-split if "
            "you really mean it.")


def card_lines(stored: dict[str, Any] | None, dropped_answers: int) -> list[str]:
    """The dataset card's decontamination lines."""
    if not stored:
        return ["- decontamination: not checked (run `python flows/decontaminate.py` or export with --decontaminate)"]
    method = stored["method"]
    how = f"word {method['ngram']}-grams" + (" of questions and answers" if method.get("answers") else " of questions")
    if method.get("embedding_model"):
        how += (f", and the {method['top_k']} nearest test question(s) by `{method['embedding_model']}` "
                f"confirmed by `{method['judge_model']}`")
    sets = ", ".join(f"{test_set['name']} ({test_set['questions']:,})" for test_set in stored["test_sets"])
    return [f"- decontamination: {how} against {sets}"
            + (f"; not checked: {', '.join(stored['not_checked'])}" if stored["not_checked"] else ""),
            f"- contaminated: {stored['contaminated']:,} of {stored['checked']:,} questions, "
            f"{dropped_answers:,} of their answers left out"]
