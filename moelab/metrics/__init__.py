"""Numbers a run reports (defined in docs/METRICS.md)."""
