"""Results checked before any weight is read: a run whose row could not be stored must not start.

The experiment's folder is created and a file is written and removed in it; an existing runs.parquet and
row files are read. Any failure is a `ResultsError` naming the path and what to do, so a sweep that would
otherwise measure for hours and drop every row stops at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moelab.core.errors import ResultsError
from moelab.results.store import ROW_FILES, read_table


def experiment_dir(c: Mapping[str, Any]) -> Path:
    return Path(str(c.get("results_dir", "results"))) / str(c.get("experiment_name", "default"))


def check_results(c: Mapping[str, Any]) -> Path:
    """Prove the run's results can be stored (folder writable, existing tables readable); returns the folder."""
    exp_dir = experiment_dir(c)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ResultsError(f"results folder {exp_dir} cannot be written ({e.strerror or e}); set results_dir= to a "
                           "writable folder") from None
    table = exp_dir / "runs.parquet"
    if table.exists():
        read_table(table)
    for f in sorted((exp_dir / ROW_FILES).glob("*.parquet")):
        read_table(f)
    return exp_dir
