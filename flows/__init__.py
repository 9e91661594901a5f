"""The commands, each a thin Prefect flow over `tasks/` (status, a plain read, is not a flow)."""
