"""Throughput, one definition for every report (the worker's summary and terminal line, the run's
dashboard, evaluate): a device's rate is its generated tokens over its generation seconds; the
devices of a worker (and the workers of a fleet) run in parallel, so their rates add up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

TOTALS = ("items", "done", "failed", "tokens", "seconds")


def tokens_per_second(tokens: float, seconds: float) -> float:
    """One device's rate (0 before it generated anything)."""
    return tokens / seconds if seconds else 0.0


def combined_rate(devices: Iterable[dict[str, Any]]) -> float:
    """The rate of devices working in parallel: the sum of theirs (each with `tokens`, `seconds`)."""
    return sum(tokens_per_second(device["tokens"], device["seconds"]) for device in devices)


@dataclass(kw_only=True)
class BatchReport:
    """What one store call wrote for one device."""

    device: str
    items: int
    tokens: int
    seconds: float
    done: int = 0
    failed: int = 0


def summarize_reports(reports: list[BatchReport], devices_loaded: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Batches, items, tokens, seconds and tokens/s per device (a loaded device that got no work
    shows zeros), then `all`: the worker's totals and combined rate."""
    def zeros() -> dict[str, Any]:
        return {"batches": 0, **{name: 0 for name in TOTALS}, "seconds": 0.0}

    devices = {label: zeros() for label in devices_loaded}
    for report in reports:
        total = devices.setdefault(report.device, zeros())
        total["batches"] += 1
        for name in TOTALS:
            total[name] += getattr(report, name)
    overall = {name: sum(total[name] for total in devices.values()) for name in ("batches", *TOTALS[:-1])}
    overall["tokens_per_second"] = round(combined_rate(devices.values()), 1)
    for total in devices.values():
        total["tokens_per_second"] = round(tokens_per_second(total["tokens"], total["seconds"]), 1)
        total["seconds"] = round(total["seconds"], 2)
    return {**dict(sorted(devices.items())), "all": overall}
