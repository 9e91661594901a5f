"""The store's interface: every backend implements it and passes tests/test_store.py."""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from tasks.store.models import Checkpoint, Claim, Item, Result


class Store(Protocol):
    url: str  # redacted, safe to print

    def ensure_run(self, run: str, config: dict[str, Any]) -> None:
        """Record a run (name, config snapshot, created) unless it exists."""

    def runs(self) -> list[str]:
        """Names of all runs."""

    def run_config(self, run: str) -> dict[str, Any]:
        """The settings a run was seeded with ({} for an unknown run)."""

    def set_contamination(self, run: str, report: dict[str, Any]) -> None:
        """Keep the run's latest decontamination report (tasks/decontamination.py), replacing any earlier one."""

    def contamination(self, run: str) -> dict[str, Any] | None:
        """The run's latest decontamination report; None when it was never checked."""

    def set_texts_url(self, run: str, url: str) -> None:
        """Keep where the run's workers write its answers' texts (--texts), replacing any earlier one."""

    def texts_url(self, run: str) -> str | None:
        """Where the run's answers' texts are (`tasks/texts.py`); None when they are in the store."""

    def seed(self, run: str, items: Iterable[Item]) -> int:
        """Insert items that are not there yet; return how many were new."""

    def claim(self, run: str, worker: str, limit: int, lease_seconds: float, *, max_attempts: int = 3) -> Claim:
        """Atomically take up to `limit` pending or lease-expired items of `run`. Taking over an
        expired lease spends an attempt (its worker died holding it); an item whose lease expires
        for the `max_attempts`-th time is marked failed instead (a poison item)."""

    def heartbeat(self, claim: Claim, lease_seconds: float) -> int:
        """Extend the lease of the claim's items still held; return how many."""

    def checkpoint(self, claim: Claim, checkpoints: dict[str, Checkpoint]) -> int:
        """Keep answers being generated (by item id) with their items still held by the claim, in one
        round trip; an item given back or taken over keeps its checkpoint for its next claim, and
        `complete` drops it. Return how many were kept."""

    def complete(self, claim: Claim, results: dict[str, Result]) -> int:
        """Store results (by item id) of items still held by the claim (dropping their checkpoints);
        return how many."""

    def complete_many(self, parts: list[tuple[Claim, dict[str, Result]]]) -> int:
        """`complete` for several claims at once, in one round trip; return how many were stored."""

    def fail(self, claim: Claim, ids: list[str], error: str, max_attempts: int) -> int:
        """Give items back (attempts + 1) or mark them failed after `max_attempts`."""

    def advance(self, run: str) -> None:
        """For a run seeded with --until-correct, settle every question's waiting samples: cancelled
        once it has enough correct answers, else the next one made pending when none is (done
        after every write; this call repairs a question left waiting by a write that failed halfway)."""

    def release(self, claim: Claim) -> int:
        """Give still-held items back untouched (a clean shutdown); return how many."""

    def add_judgements(self, run: str, judgements: dict[str, dict[str, Any]]) -> int:
        """Store each judgement (by item id) as its done item's `result.judge`, beside the rule-based
        verdict, never changing it; return how many were stored."""

    def counts(self, run: str) -> list[dict[str, Any]]:
        """Rows {stage, status, worker, n, expired} grouping every item of the run."""

    def devices(self, run: str) -> list[dict[str, Any]]:
        """Rows {worker, device, done, tokens, seconds, last} of the answers each worker's device
        wrote (seconds: generation time; last: when its latest answer was made)."""

    def storage(self) -> dict[str, float] | None:
        """{bytes, documents, bytes_per_document} where a quota applies (MongoDB), else None."""

    def longest_prompts(self, run: str, limit: int) -> list[Item]:
        """Of the items still to answer (pending, running, waiting), the `limit` whose question and
        previous answer are longest in characters (found by the store: only those are read)."""

    def items(self, run: str, *, texts: bool = True) -> list[Item]:
        """Every item of the run (for reports, exports and tests); `texts=False` leaves the long
        texts out (question, previous answer, response: empty), which is all evaluate needs."""

    def close(self) -> None: ...
