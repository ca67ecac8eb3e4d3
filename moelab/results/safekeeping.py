"""A finished measurement is never thrown away: a row the logger cannot write goes to a fallback file.

The fallback is tried in order: a row file in the experiment's `rows/` folder (read and merged like any other
row file), then the current folder, then the system's temporary folder; each as parquet, else as JSON. As a last
resort the row is printed. The caller is told where it went (`Stored`), so the command can say so and exit
non-zero instead of reporting success.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from moelab.core.errors import ResultsError
from moelab.results.store import write_row, write_row_file


@dataclass(frozen=True)
class Stored:
    """Where a run's row went: the logger's file, or (`fallback`) a file of its own after `reason`."""

    run_id: str
    path: Path | None
    fallback: bool = False
    reason: str = ""

    def line(self) -> str:
        if not self.fallback:
            return f"run {self.run_id}: row in {self.path}"
        where = f"saved in {self.path}" if self.path is not None else "printed above (no file could be written)"
        return (f"run {self.run_id}: its row could not be written ({self.reason}); it is {where}; "
                "`python -m moelab.sweep merge RESULTS_DIR` folds rows/ files into runs.parquet")


LAST: Stored | None = None  # where the last row of this process went, for the command's closing line


def record(row: Mapping[str, Any], steps: Any, logger: Any, exp_dir: Path) -> Stored:
    """`logger.log_run(row, steps)`, or the fallback when that fails; returns where the row went."""
    global LAST
    rid = str(row.get("run_id", "run"))
    try:
        LAST = Stored(rid, Path(logger.log_run(row, steps)))
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:300]
        LAST = Stored(rid, fallback_save(row, exp_dir), fallback=True, reason=reason)
        if row.get("status") != "ok":  # the run's own error is the command's message: this one adds where it went
            print(f"error: {LAST.line()}", file=sys.stderr, flush=True)
    return LAST


def require_stored(stored: Stored) -> None:
    """A finished run whose row went to a fallback file ends the command with an error naming the file."""
    if stored.fallback:
        raise RowNotStoredError(stored.line())


class RowNotStoredError(ResultsError):
    """The run finished but its row is in a fallback file, not in the experiment's results."""


def fallback_save(row: Mapping[str, Any], exp_dir: Path) -> Path | None:
    """Write `row` somewhere it survives; returns the file, or None after printing it as JSON."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    name = f"moelab-row-{row.get('run_id', 'run')}-{stamp}-{os.getpid()}"
    try:
        return write_row_file(exp_dir, row)
    except Exception:
        pass
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        for write in (_parquet, _json):
            try:
                return write(row, folder / name)
            except Exception:
                continue
    print(json.dumps(dict(row), default=str), file=sys.stderr, flush=True)
    return None


def _parquet(row: Mapping[str, Any], stem: Path) -> Path:
    return write_row(stem.with_suffix(".parquet"), row)


def _json(row: Mapping[str, Any], stem: Path) -> Path:
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(dict(row), default=str))
    return path
