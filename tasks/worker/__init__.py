"""The worker: each device loops claim -> generate -> grade -> complete (`loop.py`), answering a
batch on its engine (`batch.py`) in the chat built for each item (`chat.py`), while a heartbeat
keeps its claims' leases alive (`leases.py`). `steps.py` wraps these as Prefect tasks."""
