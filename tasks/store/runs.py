"""Runs named on the command line: a list or shell patterns matched against the store's runs."""

from __future__ import annotations

import fnmatch

from tasks.errors import UserError
from tasks.store.protocol import Store


def match_runs(store: Store, spec: str) -> list[str]:
    """The runs a spec names, in its order: `a,b,c`, or shell patterns such as `suite-*` (matched
    in the order the runs were created); UserError naming the runs there are when one matches nothing."""
    known, runs = store.runs(), []
    for part in (part.strip() for part in spec.split(",") if part.strip()):
        matched = fnmatch.filter(known, part) if any(char in part for char in "*?[") else [part] * (part in known)
        if not matched:
            require_run(store, part)  # says which runs there are
        runs += [run for run in matched if run not in runs]
    return runs


def require_run(store: Store, run: str) -> None:
    """UserError naming the runs there are, when `run` is not in the store."""
    if run not in store.runs():
        known = ", ".join(store.runs()) or "none yet (seed one with python flows/seed.py)"
        raise UserError(f"Run {run!r} is not in the store {store.url}. Runs there: {known}.")
