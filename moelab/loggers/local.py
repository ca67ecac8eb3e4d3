"""Local results: one row per run in results/<experiment>/runs.parquet, steps beside it.

`row_files=true` writes each row to its own file under results/<experiment>/rows/ instead (for runs on
several hosts sharing a file system, where the runs.parquet lock may not hold); readers merge both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from moelab.core.registry import register
from moelab.loggers.base import Logger
from moelab.results.console import print_summary
from moelab.results.store import append_row, write_parquet, write_row_file


@register("logger", "local")
class LocalLogger(Logger):
    def __init__(self, results_dir: str = "results", console: bool = True, row_files: bool = False):
        self.results_dir = Path(results_dir)
        self.console = console
        self.row_files = row_files

    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.results_dir / experiment / run_id

    def log_run(self, row: Mapping[str, Any], steps: pd.DataFrame | None) -> Path:
        """Write the step table (if any) then append the row; returns the file the row went to."""
        experiment, rid = str(row["experiment"]), str(row["run_id"])
        if steps is not None and len(steps):
            write_parquet(steps.assign(run_id=rid), self.run_dir(experiment, rid) / "steps.parquet")
        if self.row_files:
            runs = write_row_file(self.results_dir / experiment, row)
        else:
            runs = self.results_dir / experiment / "runs.parquet"
            append_row(runs, row)
        if self.console and row.get("status") == "ok":  # a failed run's table would be empty: its error says it
            print_summary(row)
        return runs
