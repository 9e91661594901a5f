"""The README's quick start, timed from cold: `python bench/quickstart.py [--items 40] [--model PATH_OR_HUB_ID]`.

In a new folder with a new Prefect home (no Prefect server running yet: the first command starts
the machine's shared one in the background), runs the quick start's three commands as a user
would: seed N GSM8K test questions, one worker on the CPU, evaluate. Prints each command's wall
time and the total. Without --model it uses the tests' tiny random model, built first and not
timed (offline; its answers are wrong, the timing is what counts). The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.prefect_server import stop_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--model", help="a local folder or hub id (default: the tests' tiny random model)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetgen-quickstart-") as scratch:
        folder = Path(scratch)
        env = {**{k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MONGODB_URI")},
               "PREFECT_HOME": str(folder / "prefect-home")}
        model = args.model
        if model is None:
            from bench.standins import build_model

            model = str(build_model(folder / "tiny-model", chat=True))
        commands = [
            ("seed", ["flows/seed.py", "--run", "quick", "--limit", str(args.items)]),
            ("generate", ["flows/generate.py", "--run", "quick", "--model", model, "--devices", "cpu",
                          "--max-new-tokens", str(args.max_new_tokens)]),
            ("evaluate", ["flows/evaluate.py", "--run", "quick"]),
        ]
        times = {}
        try:
            for name, command in commands:
                started = time.monotonic()
                result = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=folder, env=env,
                                        capture_output=True, text=True)
                times[name] = time.monotonic() - started
                if result.returncode:
                    raise SystemExit(f"{name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
                print(f"{name}: {times[name]:.1f} s  ({result.stdout.strip().splitlines()[-1][:120]})")
        finally:
            stop_server(folder / "prefect-home" / "fleetgen-server")
        print(f"total, cold: {sum(times.values()):.1f} s for {args.items} items on {os.cpu_count()} cores "
              f"(model {'tiny random' if args.model is None else args.model}, --max-new-tokens {args.max_new_tokens})")


if __name__ == "__main__":
    main()
