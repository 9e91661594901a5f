"""The work store: what every flow reads and writes, chosen by URL.

Each work item is one (run, stage, question_id, sample). A worker *claims* a batch of
pending (or lease-expired) items, which marks them running under a fresh claim token and a
lease; it then *completes* or *fails* them through that token, so a worker whose lease
expired and was taken over can never overwrite the new owner's work.

`mongodb://` / `mongodb+srv://` URLs open MongoDB (`tasks/store/mongo.py`); `sqlite:///PATH`
opens an embedded SQLite file (`tasks/store/sqlite.py`, the zero-setup default). Both pass the
same conformance tests. Leases are timed with the store's `clock` (injectable for tests).

Modules: `protocol.py` (the interface), `urls.py` (which store a URL names, `open_store`),
`runs.py` (run names and patterns), `counts.py` (a run's counts), `quota.py` (the free tier's
storage quota), `packing.py` (long texts kept compressed), `models.py` (items, claims, results),
`steps.py` (its Prefect tasks).
"""

from tasks.store.protocol import Store
from tasks.store.urls import open_store

__all__ = ["Store", "open_store"]
