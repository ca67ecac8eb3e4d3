"""A finished measurement is never thrown away: a row the logger cannot write goes to a fallback file.

The fallback is tried in order: a row file in the experiment's `rows/` folder (read and merged like any other
row file), then a folder of the system's temporary folder kept for that experiment (`stash_dir`: a full results
disk rarely fills the temporary one too), as parquet, else as JSON; `python -m moelab.sweep merge` brings both
into runs.parquet. As a last resort the row is printed. The caller is told where it went (`Stored`, one line), so
the command can say so and exit non-zero instead of reporting success.
"""

from __future__ import annotations

import hashlib
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
from moelab.results.store import ROW_FILES, write_row, write_row_file


@dataclass(frozen=True)
class Stored:
    """Where a run's row went: the logger's file, or (`fallback`) a file of its own after `reason`."""

    run_id: str
    path: Path | None
    fallback: bool = False
    reason: str = ""
    exp_dir: Path | None = None  # the experiment the row belongs to (for the `sweep merge` command to give)

    def line(self) -> str:
        if not self.fallback:
            return f"run {self.run_id}: row in {self.path}"
        if self.path is None:
            return (f"run {self.run_id}: its row could not be written ({self.reason}); no file could be written "
                    "either, so it is printed above as JSON")
        merge = (f"python -m moelab.sweep merge {self.exp_dir.parent} {self.exp_dir.name}" if self.exp_dir
                 else "python -m moelab.sweep merge RESULTS_DIR EXPERIMENT")
        where = "its rows/ folder" if self.exp_dir and self.path.parent == self.exp_dir / ROW_FILES else \
            "the temporary folder, as the results folder could not be written"
        return (f"run {self.run_id}: its row could not be written to runs.parquet ({self.reason}); it is saved in "
                f"{where}: {self.path}; `{merge}` folds it into runs.parquet once there is room")


LAST: Stored | None = None  # where the last row of this process went, for the command's closing line


def record(row: Mapping[str, Any], steps: Any, logger: Any, exp_dir: Path) -> Stored:
    """`logger.log_run(row, steps)`, or the fallback when that fails; returns where the row went."""
    global LAST
    rid = str(row.get("run_id", "run"))
    try:
        LAST = Stored(rid, Path(logger.log_run(row, steps)))
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:300]
        LAST = Stored(rid, fallback_save(row, exp_dir), fallback=True, reason=reason, exp_dir=Path(exp_dir))
        if row.get("status") != "ok":  # the run's own error is the command's message: this one adds where it went
            print(f"error: {LAST.line()}", file=sys.stderr, flush=True)
    return LAST


def require_stored(stored: Stored) -> None:
    """A finished run whose row went to a fallback file ends the command with an error naming the file."""
    if stored.fallback:
        raise RowNotStoredError(stored.line())


class RowNotStoredError(ResultsError):
    """The run finished but its row is in a fallback file, not in the experiment's results."""


STASH = "moelab-rows"  # <temp>/moelab-rows/<experiment>-<digest of its absolute path>/: rows kept for it


def stash_dir(exp_dir: Path | str) -> Path:
    """The temporary folder kept for the experiment at `exp_dir` (one per absolute path, so two results folders
    with an experiment of the same name never mix), where its rows go when the results folder cannot be written."""
    path = Path(os.path.abspath(Path(exp_dir).expanduser()))
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / STASH / f"{path.name}-{digest}"


def stashed_files(exp_dir: Path | str) -> list[Path]:
    """Rows of this experiment saved in the temporary folder (parquet and JSON), oldest first."""
    folder = stash_dir(exp_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.name.startswith("moelab-row-") and p.suffix in (".parquet", ".json")]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def read_stashed(path: Path) -> dict[str, Any]:
    """One stashed row as a dict (from its parquet or JSON file)."""
    if path.suffix == ".json":
        return dict(json.loads(path.read_text()))
    import pandas as pd

    return pd.read_parquet(path).to_dict("records")[0]


def fallback_save(row: Mapping[str, Any], exp_dir: Path) -> Path | None:
    """Write `row` somewhere it survives: the experiment's rows/ folder, else its temporary folder
    (`stash_dir`); returns the file, or None after printing the row as JSON."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    name = f"moelab-row-{row.get('run_id', 'run')}-{stamp}-{os.getpid()}"
    try:
        return write_row_file(exp_dir, row)
    except Exception:
        pass
    for write in (_parquet, _json):
        try:
            folder = stash_dir(exp_dir)
            folder.mkdir(parents=True, exist_ok=True)
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


def unstash(exp_dir: Path | str) -> int:
    """Move this experiment's rows saved in the temporary folder into its rows/ folder (where `read_runs` and
    `merge_row_files` find them); returns how many. A file is removed only once its row is written."""
    moved = 0
    for path in stashed_files(exp_dir):
        write_row_file(exp_dir, read_stashed(path))
        path.unlink()
        moved += 1
    return moved
