"""Numbers a run reports (definitions in ../shared/docs/METRICS.md, restated in docstrings here)."""
