"""Code execution's costs, measured side by side: `python bench/sandbox.py [--executions 64] [--items 64]
[--before REV]`.

(a) executions per second through the sandbox (every layer this machine allows) ÷ a bare
    `subprocess.run([python, "-c", code])`, the same short programs, as many in parallel as there
    are cores, interleaved over 3 repeats (medians); with --before, also the sandbox as it was at
    REV (loaded from git), interleaved with the others, and the milliseconds an execution costs
    each way;
(b) the device-busy share of a run where every item executes code once: a simulated device (a
    batch of 8 takes 0.5 s, as a small GPU batch might) behind the real code loop and sandbox; the
    share of the wall time the device spends generating (target >= 0.9: the items whose code runs
    leave the device to the others).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import SamplingConfig  # noqa: E402
from tasks.engines import Generation, ListFeeder, Request  # noqa: E402
from tasks.engines.code_loop import CodeLoopEngine  # noqa: E402
from tasks.sandbox import active_layers, describe_layers, execute_many  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = "import math\nprint(sum(math.comb(20, k) for k in range(21)))"


def bare(codes: list[str]) -> None:
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30),
                      codes))


def sandbox_at(revision: str, folder: Path):
    """tasks/sandbox.py as it was at `revision` (its child is the file itself, so it is written out)."""
    source = subprocess.run(["git", "show", f"{revision}:tasks/sandbox.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = folder / "sandbox_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules["sandbox_before"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(run, codes: list[str]) -> float:
    started = time.perf_counter()
    run(codes)
    return len(codes) / (time.perf_counter() - started)


class SimulatedDevice:
    """A device that takes `batch_seconds` per batch of up to `batch_size`: code first, an answer after."""

    name, device, label = "simulated", "sim", "sim"

    def __init__(self, batch_size: int = 8, batch_seconds: float = 0.5):
        self.batch_size, self.batch_seconds, self.busy = batch_size, batch_seconds, 0.0

    def run(self, feeder, sampling):
        while (requests := feeder.take(self.batch_size, wait=True)) is not None:
            if not requests:
                continue
            time.sleep(self.batch_seconds)
            self.busy += self.batch_seconds
            yield [(r, Generation("\\boxed{1}" if r.prompt[-1]["role"] == "assistant" else
                                  f"```python\n{PROGRAM}\n```", tokens=10, finish_reason="stop")) for r in requests]

    def close(self) -> None:
        pass


def device_busy(items: int) -> float:
    device = SimulatedDevice()
    engine = CodeLoopEngine(device)
    requests = [Request(key=str(n), prompt=[{"role": "user", "content": f"q{n}"}]) for n in range(items)]
    started = time.perf_counter()
    answered = sum(len(group) for group in engine.run(ListFeeder(requests), SamplingConfig()))
    assert answered == items
    return device.busy / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=64)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--before", metavar="REV", help="also measure tasks/sandbox.py as it was at this commit")
    args = parser.parse_args()
    print(describe_layers(active_layers()))
    codes = [PROGRAM] * args.executions
    with tempfile.TemporaryDirectory() as folder:
        runs = {"sandbox": execute_many, "bare": bare}
        if args.before:
            runs["before"] = sandbox_at(args.before, Path(folder)).execute_many
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(3):
            for name, run in runs.items():
                rates[name].append(rate(run, codes))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"(a) sandbox {median['sandbox']:.1f} executions/s, bare subprocess {median['bare']:.1f}/s: "
          f"ratio {median['sandbox'] / median['bare']:.2f}")
    if args.before:
        cores = len(os.sched_getaffinity(0))
        print(f"    sandbox at {args.before} {median['before']:.1f} executions/s: now ÷ then "
              f"{median['sandbox'] / median['before']:.2f}; per execution {1000 * cores / median['sandbox']:.0f} ms "
              f"now, {1000 * cores / median['before']:.0f} ms then ({cores} at a time)")
    print(f"(b) device busy {device_busy(args.items):.3f} of the wall time, "
          f"{args.items} items each executing code once")


if __name__ == "__main__":
    main()
