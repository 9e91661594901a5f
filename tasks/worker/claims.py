"""The items a device claimed, from the claim to their last answer written."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from tasks.engines import Generation, Request
from tasks.store.models import Claim, Item
from tasks.worker.results import Outcome


class ClaimedWork:
    """Requests ready for the engine (claimed ahead), each item's claim until its answer is
    written, and how long the last claim took from claimed to all written."""

    def __init__(self, request: Callable[[Item], Request]):
        self.request = request
        self.ready: deque[Request] = deque()
        self.held: dict[str, tuple[Item, Claim]] = {}  # item id -> the item and its claim, until written
        self.unwritten: dict[str, int] = {}  # claim token -> its items not written yet
        self.claimed_at: dict[str, float] = {}  # claim token -> when it came
        self.batch_seconds = 0.0

    def add(self, claim: Claim) -> None:
        self.claimed_at[claim.token] = time.monotonic()
        self.unwritten[claim.token] = len(claim.items)
        for item in claim.items:
            self.held[item.id] = (item, claim)
        self.ready.extend(self.request(item) for item in claim.items)

    def take(self, count: int) -> list[Request]:
        return [self.ready.popleft() for _ in range(min(count, len(self.ready)))]

    def outcome(self, request: Request, answer: Generation | Exception) -> Outcome:
        item, claim = self.held[request.key]
        return Outcome(item=item, claim=claim, answer=answer)

    def written(self, outcomes: list[Outcome]) -> list[Claim]:
        """Forget the items written (or failed back), unless claimed again since (given back, then
        claimed by the other lane before this write was taken in); the claims that have none left."""
        done = []
        for outcome in outcomes:
            token = outcome.claim.token
            if (held := self.held.get(outcome.item.id)) is not None and held[1].token == token:
                del self.held[outcome.item.id]
            self.unwritten[token] -= 1
            if self.unwritten[token] == 0:
                del self.unwritten[token]
                self.batch_seconds = time.monotonic() - self.claimed_at.pop(token)
                done.append(outcome.claim)
        return done

    def claims(self) -> list[Claim]:
        """The claims with items not written yet."""
        return list({claim.token: claim for _, claim in self.held.values()}.values())
