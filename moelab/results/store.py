"""Atomic, lock-protected writes of results tables, so sweeps in several processes never lose rows.

A row is appended by rewriting the parquet file to a temporary name and renaming it over
the old one, under an exclusive lock: a reader sees the old file or the new one, never half.
The lock is an fcntl lock, which holds between processes of one host (and on NFS only where the
mount supports locks). Runs spread over hosts (SLURM) write one file per row instead
(`write_row_file`, `logger.row_files=true`); `read_runs` merges both, `merge_row_files` folds them in.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from moelab.core.errors import ResultsError

LOCK_NOTICE_S = 5.0  # say so when another process holds a results file's lock longer than this


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        _acquire(lock, path)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _acquire(lock: Any, path: Path) -> None:
    """Wait for the lock as long as it takes (a writer never gives up on a row), saying once that it waits."""
    deadline = time.monotonic() + LOCK_NOTICE_S
    while time.monotonic() < deadline:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
    print(f"waiting for the lock on {path} (another process is writing it)", flush=True)
    fcntl.flock(lock, fcntl.LOCK_EX)


def read_table(path: Path) -> pd.DataFrame:
    """Read one results file; an unreadable one is a `ResultsError` naming it and what to do, never "no rows"."""
    try:
        return pd.read_parquet(path)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ResultsError(f"results file {path} cannot be read ({reason}); move it aside "
                           f"(mv {path} {path}.bad) and run again, its rows are not used until it is repaired"
                           ) from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write `df` to `path` atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode any new file would have
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one run's row to `path` (created if missing); columns are the union of all rows."""
    with locked(path):
        new = pd.DataFrame([dict(row)])
        if path.exists():
            old = read_table(path)
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        write_parquet(_parquet_safe(new), path)


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Mixed-type object columns (e.g. a config value that is a list in one run) become strings."""
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and pd.isna(v))}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return df


ROW_FILES = "rows"  # <experiment>/rows/<run_id>-<time>-<pid>.parquet: one file per row, no lock needed


def write_row_file(exp_dir: Path | str, row: Mapping[str, Any]) -> Path:
    """Write one run's row to its own file under `exp_dir/rows/` (atomic rename; safe on any shared file
    system, since no two runs write the same name). `read_runs` merges these with runs.parquet."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = Path(exp_dir) / ROW_FILES / f"{row.get('run_id', 'run')}-{stamp}-{os.getpid()}.parquet"
    return write_row(path, row)


def write_row(path: Path, row: Mapping[str, Any]) -> Path:
    """One row alone in a parquet file (atomic)."""
    write_parquet(_parquet_safe(pd.DataFrame([dict(row)])), path)
    return path


def _row_files(exp_dir: Path) -> list[Path]:
    return sorted((exp_dir / ROW_FILES).glob("*.parquet"), key=lambda p: (p.stat().st_mtime, p.name))


def _read_experiment(exp_dir: Path) -> list[pd.DataFrame]:
    table = exp_dir / "runs.parquet"
    return ([read_table(table)] if table.exists() else []) + [read_table(p) for p in _row_files(exp_dir)]


def read_runs(results_dir: Path | str, experiment: str | None = None) -> pd.DataFrame:
    """All rows of one experiment, or of every experiment under `results_dir` (runs.parquet, then the rows
    written as separate files, oldest first)."""
    root = Path(results_dir)
    if experiment:
        dirs = [root / experiment]
    else:
        dirs = sorted({p.parent for p in root.glob("*/runs.parquet")} | {p.parent.parent for p in root.glob(
            f"*/{ROW_FILES}/*.parquet")})
    frames = [f for d in dirs for f in _read_experiment(d) if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def merge_row_files(exp_dir: Path | str) -> int:
    """Fold an experiment's row files into its runs.parquet (under the lock) and delete them; returns how many.
    Run it on one host once the runs that write row files are done."""
    exp_dir = Path(exp_dir)
    table = exp_dir / "runs.parquet"
    if not _row_files(exp_dir):
        return 0
    with locked(table):
        files = _row_files(exp_dir)
        if not files:
            return 0
        frames = ([read_table(table)] if table.exists() else []) + [read_table(p) for p in files]
        write_parquet(_parquet_safe(pd.concat(frames, ignore_index=True)), table)
        for p in files:
            p.unlink()
    return len(files)
