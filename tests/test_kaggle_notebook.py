"""The Kaggle notebook (deployments/kaggle_worker.ipynb) executed as Kaggle would run it, cell by
cell in a Jupyter kernel (nbclient): secrets taken from the environment (no kaggle_secrets
here), this repository cloned, the install skipped (already installed), and a worker with
--max-runtime on a tiny local model draining a run in SQLite, reporting to the test Prefect server."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tasks.store.models import Item
from tasks.store.sqlite import SqliteStore
from tests.conftest import ROOT, cli_env

API_KEY = "pnu_notebookSecretKey0123456789"


def test_the_kaggle_notebook_runs_a_worker_that_drains_a_run(prefect_env, tmp_path: Path, tiny_model: Path,
                                                              monkeypatch) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    store.ensure_run("kaggle", {"samples": 1})
    store.seed("kaggle", [Item(question_id=f"q{n}", question=f"What is {n} + 1?", reference=str(n + 1))
                          for n in range(6)])
    store.close()
    for name, value in cli_env({**prefect_env, "MONGODB_URI": f"sqlite:///{tmp_path / 'fleet.db'}",
                                "PREFECT_API_KEY": API_KEY, "FLEETGEN_REPO": ROOT.as_uri(), "FLEETGEN_RUN": "kaggle",
                                "FLEETGEN_MODEL": str(tiny_model),
                                "FLEETGEN_WORKER_FLAGS": "--devices cpu --batch-size 4 --max-new-tokens 4 "
                                                         "--max-runtime 20m"}).items():
        monkeypatch.setenv(name, value)  # the kernel inherits this environment
    notebook = nbformat.read(ROOT / "deployments" / "kaggle_worker.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "secrets set: MONGODB_URI, PREFECT_API_URL, PREFECT_API_KEY" in printed
    assert "run(s) kaggle finished; this worker did 6 items (0 failed)" in printed, printed[-3000:]
    assert API_KEY not in printed
    assert (tmp_path / "fleetgen" / "flows" / "generate.py").is_file()  # the clone
    assert {item.status for item in SqliteStore(tmp_path / "fleet.db").items("kaggle")} == {"done"}
