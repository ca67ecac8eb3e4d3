"""Atomic, lock-protected writes of results tables, so sweeps in several processes never lose rows.

A row is appended by rewriting the parquet file to a temporary name and renaming it over
the old one, under an exclusive lock: a reader sees the old file or the new one, never half.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write `df` to `path` atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one run's row to `path` (created if missing); columns are the union of all rows."""
    with locked(path):
        new = pd.DataFrame([dict(row)])
        if path.exists():
            old = pd.read_parquet(path)
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


def read_runs(results_dir: Path | str, experiment: str | None = None) -> pd.DataFrame:
    """All rows of one experiment, or of every experiment under `results_dir`."""
    root = Path(results_dir)
    paths = [root / experiment / "runs.parquet"] if experiment else sorted(root.glob("*/runs.parquet"))
    frames = [pd.read_parquet(p) for p in paths if p.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
