"""Screenshots of the fleet dashboard in the Prefect UI: `python bench/ui_snapshot.py [--out DIR]`.

For a maintainer who wants to look at what users see. In a new folder with a new Prefect home
(the machine's shared local server, started by the first command), seeds a run, starts two CPU
workers with the tests' tiny random model, and while they work takes a screenshot with headless
Chromium (Debian: `apt-get install chromium`) of the run's dashboard table; then evaluates the
run and shoots its accuracy table and the runs page. Writes PNGs to --out (default: docs/) and stops
the server at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.prefect_server import read_state, stop_server  # noqa: E402


def shoot(browser: str, url: str, path: Path) -> None:
    """One screenshot of a page of the UI, after its scripts had time to render it."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,900", "--virtual-time-budget=15000", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {path} ({url})")


def latest_ids(api_url: str) -> dict[str, str]:
    """The id of the latest artifact under each key (the one every worker updates)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return {artifact.key: str(artifact.latest_id) for artifact in client.read_latest_artifacts()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--items", type=int, default=400)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("No Chromium found: install it with `apt-get install chromium` (Debian) and run again.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetgen-ui-") as scratch:
        folder = Path(scratch)
        home = folder / "prefect-home"
        env = {**{k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MONGODB_URI")},
               "PREFECT_HOME": str(home)}

        def command(script: str, *flags: str, background: bool = False) -> subprocess.Popen:
            process = subprocess.Popen([sys.executable, str(ROOT / script), *flags], cwd=folder, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not background and process.wait():
                raise SystemExit(f"{script} {' '.join(flags)} failed")
            return process

        from bench.standins import build_model

        model = str(build_model(folder / "tiny-model", chat=True))
        try:
            command("flows/seed.py", "--run", "demo", "--limit", str(args.items))
            workers = [command("flows/generate.py", "--run", "demo", "--model", model, "--devices", "cpu",
                               "--worker", f"notebook-{n}", "--batch-size", "4", "--max-new-tokens", "200",
                               background=True) for n in (1, 2)]
            state = read_state(home / "fleetgen-server")
            assert state is not None, "the local Prefect server did not start"
            time.sleep(75)  # both workers at work; the dashboard refreshes every 30 s
            latest = latest_ids(state["url"])
            shoot(browser, f"{state['ui']}/artifacts/artifact/{latest['dashboard-demo']}", out / "dashboard.png")
            for worker in workers:
                worker.wait()
            command("flows/evaluate.py", "--run", "demo", "--json", str(folder / "demo.json"))
            shoot(browser, f"{state['ui']}/artifacts/artifact/{latest_ids(state['url'])['accuracy-demo']}",
                  out / "evaluate.png")
            shoot(browser, f"{state['ui']}/runs", out / "runs.png")
            print(json.dumps({"ui": state["ui"], "out": str(out)}))
        finally:
            stop_server(home / "fleetgen-server")


if __name__ == "__main__":
    main()
