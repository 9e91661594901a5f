"""Keeping claims alive: heartbeats from a background thread, claims given back on exit, and the
answers being streamed kept with their items (checkpoints) so that a claim given back, or one
whose lease expires, is continued rather than started over."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from tasks.config import WorkerConfig
from tasks.store import Store
from tasks.store.models import Checkpoint, Claim, Item

log = logging.getLogger("fleetgen")
STREAMING_ENGINES = ("openai", "vllm")


def checkpoint_plan(config: WorkerConfig) -> str:
    """Said once at start: whether answers are kept with their items while they are generated."""
    seconds = config.checkpoint_seconds
    if not seconds:
        return "checkpoints: off (--checkpoint-seconds 0): an answer given back starts over"
    if config.engine.name not in STREAMING_ENGINES:
        return (f"checkpoints: none with --engine {config.engine.name} (it cannot stream): an answer given back "
                "starts over")
    return (f"checkpoints: answers streamed for {seconds:g} s are kept with their items every {seconds:g} s and when "
            "given back, and the next worker goes on from them")


@dataclass
class Growing:
    """An answer being streamed: since when, what reads it so far, and how many tokens of it are kept."""

    started: float
    so_far: Callable[[], Checkpoint]
    kept_tokens: int = 0


class LeaseKeeper:
    """Heartbeats every held claim every `lease_seconds / 3`; with `checkpoint_seconds`, keeps the
    answers streamed for that long with their items that often (and at once when their claim is
    given back); gives the claims back on exit."""

    def __init__(self, store: Store, lease_seconds: float, checkpoint_seconds: float = 0.0):
        self.store, self.lease_seconds, self.checkpoint_seconds = store, lease_seconds, checkpoint_seconds
        self._claims: dict[str, Claim] = {}
        self._claim_of: dict[str, str] = {}  # item id -> its claim's token
        self._growing: dict[str, Growing] = {}  # item id -> its answer so far
        self._staged: dict[str, set[str]] = {}  # claim token -> its items answered, waiting for their shard (--texts)
        self._written: set[str] = set()  # tokens of claims written but for staged items: dropped once those are
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._dropped = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._beat, name="heartbeat", daemon=True)]
        if checkpoint_seconds:
            self._threads.append(threading.Thread(target=self._checkpoint_often, name="checkpoints", daemon=True))

    def __enter__(self) -> LeaseKeeper:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.give_back_all()

    def progress(self, item: Item) -> Callable[[Callable[[], tuple[str, int]]], None] | None:
        """With checkpoints on, what an engine hands the reader of an item's answer so far (text,
        tokens) when it starts streaming; an answer continued from its item's checkpoint goes on
        from there."""
        if not self.checkpoint_seconds:
            return None
        before = Checkpoint.from_dict(item.partial) if item.partial else None

        def started(read: Callable[[], tuple[str, int]]) -> None:
            def so_far() -> Checkpoint:
                text, tokens = read()
                return before.then(text, tokens) if before else Checkpoint(text, tokens)

            with self._lock:
                self._growing[item.id] = Growing(time.monotonic(), so_far)

        return started

    def forget(self, ids: list[str]) -> None:
        """Items written: their answers are no longer growing."""
        with self._lock:
            for id_ in ids:
                self._growing.pop(id_, None)

    def keep_checkpoints(self, *, streamed_for: float, of_claims: list[str] | None = None) -> int:
        """Keep with their items the answers streamed for at least `streamed_for` seconds that grew
        since they were last kept (of the claims with these tokens, or of all): one store write per
        claim. A store that cannot be reached keeps them for the next time."""
        now, kept = time.monotonic(), 0
        with self._lock:
            due: dict[str, dict[str, Checkpoint]] = {}
            for id_, growing in self._growing.items():
                token = self._claim_of.get(id_)
                if token in self._claims and (of_claims is None or token in of_claims) and (
                        now - growing.started >= streamed_for and (checkpoint := growing.so_far()).tokens
                        > growing.kept_tokens):
                    due.setdefault(token, {})[id_] = checkpoint
            claims = {token: self._claims[token] for token in due}
        for token, checkpoints in due.items():
            try:
                kept += self.store.checkpoint(claims[token], checkpoints)
            except Exception as error:
                log.warning(f"could not keep {len(checkpoints)} answers' checkpoints ({error}); trying again later")
                continue
            with self._lock:
                for id_, checkpoint in checkpoints.items():
                    if id_ in self._growing:
                        self._growing[id_].kept_tokens = checkpoint.tokens
        return kept

    def give_back_all(self) -> None:
        with self._lock:
            claims = list(self._claims.values())
        for claim in claims:
            self.give_back(claim)

    def give_back(self, claim: Claim) -> None:
        """Release a claim's unwritten items at once (other workers take them without waiting
        for the lease), their answers so far kept with them first; items staged for a shard stay
        held until it is written. A store that cannot be reached leaves them to the lease."""
        if self.checkpoint_seconds:
            self.keep_checkpoints(streamed_for=0.0, of_claims=[claim.token])
        with self._lock:
            staged = self._staged.get(claim.token, set())
        unstaged = claim.only(set(claim.ids) - staged)
        self.drop(claim)
        if not unstaged.items:
            return
        try:
            released = self.store.release(unstaged)
        except Exception as error:
            log.warning(f"could not give back a claim ({error}); its items return when the lease ends")
            return
        if released:
            log.info(f"gave back {released} unfinished items")

    def stage(self, claim: Claim, ids: list[str]) -> None:
        """These answered items wait for their shard: their claim stays held (heartbeats go on)."""
        with self._lock:
            self._staged.setdefault(claim.token, set()).update(ids)

    def unstage(self, claim: Claim, ids: list[str]) -> None:
        """Their shard is written (or given up): a claim dropped meanwhile goes now."""
        with self._lock:
            staged = self._staged.get(claim.token, set())
            staged.difference_update(ids)
            if staged or claim.token not in self._staged:
                return
            del self._staged[claim.token]
            if claim.token in self._written:
                self._written.discard(claim.token)
                self._forget_claim(claim)

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.token] = claim
            self._claim_of.update((item.id, claim.token) for item in claim.items)

    def drop(self, claim: Claim) -> None:
        """A claim written (or given back): no more heartbeats, unless items of it wait for their shard."""
        with self._lock:
            if self._staged.get(claim.token):
                self._written.add(claim.token)
                for item in claim.items:
                    self._growing.pop(item.id, None)
            else:
                self._forget_claim(claim)

    def _forget_claim(self, claim: Claim) -> None:
        """(The caller holds the lock.)"""
        self._claims.pop(claim.token, None)
        for item in claim.items:
            self._claim_of.pop(item.id, None)
            self._growing.pop(item.id, None)
        self._dropped.notify_all()

    def wait_for_drop(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a claim of this worker to be written or given back;
        True if one was (an idle device of the worker then looks again at once)."""
        with self._dropped:
            return self._dropped.wait(timeout)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                claims = list(self._claims.values())
            for claim in claims:  # fewer kept than held is no sign of a takeover: some are written by now
                try:
                    self.store.heartbeat(claim, self.lease_seconds)
                except Exception as error:  # a flaky network: the next beat tries again
                    log.warning(f"heartbeat failed ({error}); retrying in {self.lease_seconds / 3:.0f} s")

    def _checkpoint_often(self) -> None:
        while not self._stop.wait(self.checkpoint_seconds):
            self.keep_checkpoints(streamed_for=self.checkpoint_seconds)
