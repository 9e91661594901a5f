"""fleetgen's business logic, in ordinary typed functions; `flows/` holds the thin commands.

The Prefect tasks (retries, caching, task runs in the UI) live in each package's `steps.py`
(`benchmarks`, `evaluation`, `store`, `worker`) and wrap the plain functions beside them; the
worker's store call is a task run about once a minute (`worker/writes.py`). Packages: `config`
(one definition per flow: flags, UI, deployments), `store` (MongoDB and SQLite behind one
protocol), `worker` (claim, answer, grade, write), `engines` (one module per engine), `grading`,
`sandbox` (model-written code), `evaluation`, `benchmarks`. See docs/architecture.md."""
