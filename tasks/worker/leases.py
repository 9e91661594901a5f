"""Keeping claims alive: heartbeats from a background thread, claims given back on exit."""

from __future__ import annotations

import logging
import threading
from typing import Any

from tasks.store import Store
from tasks.store.models import Claim

log = logging.getLogger("fleetgen")


class LeaseKeeper:
    """Heartbeats every held claim every `lease_seconds / 3`; gives them back on exit."""

    def __init__(self, store: Store, lease_seconds: float):
        self.store, self.lease_seconds = store, lease_seconds
        self._claims: dict[str, Claim] = {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._dropped = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.give_back_all()

    def give_back_all(self) -> None:
        with self._lock:
            claims = list(self._claims.values())
        for claim in claims:
            self.give_back(claim)

    def give_back(self, claim: Claim) -> None:
        """Release a claim's unwritten items at once (other workers take them without waiting
        for the lease); a store that cannot be reached leaves them to the lease."""
        self.drop(claim)
        try:
            released = self.store.release(claim)
        except Exception as error:
            log.warning(f"could not give back a claim ({error}); its items return when the lease ends")
            return
        if released:
            log.info(f"gave back {released} unfinished items")

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.token] = claim

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._claims.pop(claim.token, None)
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
