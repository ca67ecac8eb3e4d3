"""Results checked before any weight is read: a run whose row could not be stored must not start.

The experiment's folder is created and a file is written and removed in it; an existing runs.parquet and
row files are read. Any failure is a `ResultsError` naming the path and what to do, so a sweep that would
otherwise measure for hours and drop every row stops at once.

Nothing of a run (rows, steps, traces, lm-eval JSON) is written outside `results_dir`: every path under it is
`<results_dir>/<experiment_name>/...` with a run id that is a hash, so `experiment_name` must be one folder
name. A path-like one (`../escape`, `/abs/path`, `a/b`, `..`) is refused in one line (a `ConfigError`, exit 2),
not sanitized, before anything is created or written -- so the refused run has no row either (it has no
experiment folder to hold it). `label` and the other names are columns, never parts of a path.
A `runs.parquet` that is not a file, or a results file whose columns are not moelab's (no `run_id` or `status`),
is refused here too, before any measurement: appending to it would mix foreign rows with the run's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moelab.core.errors import ConfigError, ResultsError
from moelab.results.store import ROW_FILES, read_table

REQUIRED_COLUMNS = ("run_id", "status")  # every row moelab writes has them


def check_folder_name(key: str, name: str) -> str:
    """`name` as one folder directly under its parent (no separator, not `.`/`..`), else a one-line ConfigError."""
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise ConfigError(f"{key} must be a folder name (no '/', not '.' or '..'), got {name!r}; allowed: a name "
                          "such as budget_sweep (the run's results go to results_dir/<name>)")
    return name


def experiment_dir(c: Mapping[str, Any]) -> Path:
    name = check_folder_name("experiment_name", str(c.get("experiment_name", "default")))
    return Path(str(c.get("results_dir", "results"))) / name


def _check_table(path: Path) -> None:
    if not path.is_file():
        raise ResultsError(f"results file {path} is not a file (a {'folder' if path.is_dir() else 'special file'}); "
                           f"move it aside (mv {path} {path}.bad) and run again")
    df = read_table(path)
    missing = [col for col in REQUIRED_COLUMNS if col not in df.columns]
    if missing:
        raise ResultsError(f"results file {path} is not a moelab results table (no {', '.join(missing)} column; "
                           f"has {', '.join(map(str, df.columns[:6])) or 'no columns'}); move it aside "
                           f"(mv {path} {path}.bad) or choose another experiment_name=/results_dir=")


def check_results(c: Mapping[str, Any]) -> Path:
    """Prove the run's results can be stored (a folder name, folder writable, existing tables moelab's and
    readable); returns the folder."""
    exp_dir = experiment_dir(c)  # a path-like experiment_name: refused before anything is created
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        probe = exp_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ResultsError(f"results folder {exp_dir} cannot be written ({e.strerror or e}); set results_dir= to a "
                           "writable folder") from None
    table = exp_dir / "runs.parquet"
    if table.exists() or table.is_symlink():
        _check_table(table)
    for f in sorted((exp_dir / ROW_FILES).glob("*.parquet")):
        _check_table(f)
    return exp_dir
