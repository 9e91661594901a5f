"""The worker, one way: each device's engine answers what its exchange hands out (`loop.py`,
`exchange.py` with its parts `claims.py`, `outbox.py`, `polling.py`), in the chat built for each
item (`chat.py`); the exchange's background store call grades the answers and writes them
(`writes.py`, `results.py`; with --texts through the worker's shard writer, `shards.py`) while
a heartbeat keeps the claims' leases alive (`leases.py`).
`shutdown.py` stops it cleanly; `steps.py` holds its Prefect tasks."""
