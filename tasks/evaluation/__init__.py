"""Evaluation: the metrics of a run (`metrics.py`), their readable report and chart
(`report.py`), and the Prefect task that publishes them (`steps.py`)."""
