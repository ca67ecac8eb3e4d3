"""Results files: appends are atomic and lock-protected, so parallel runs never lose or corrupt rows."""

import multiprocessing as mp

import pandas as pd
import pytest

from moelab.results.row import run_id
from moelab.results.store import append_row, read_runs, write_parquet


def _append_many(path, worker, n):
    for i in range(n):
        append_row(path, {"worker": worker, "i": i, "value": float(i)})


def test_concurrent_appends_keep_every_row(tmp_path):
    path = tmp_path / "exp" / "runs.parquet"
    procs = [mp.get_context("spawn").Process(target=_append_many, args=(path, w, 20)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = pd.read_parquet(path)
    assert len(df) == 80
    assert df.groupby("worker").i.apply(sorted).tolist() == [list(range(20))] * 4  # every row, each once


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "runs.parquet"
    append_row(path, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        append_row(path, {"a": 2})
    monkeypatch.undo()
    assert pd.read_parquet(path)["a"].tolist() == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rows_with_new_columns_and_mixed_types(tmp_path):
    path = tmp_path / "e" / "runs.parquet"
    append_row(path, {"a": 1, "x": "[1, 2]"})
    append_row(path, {"a": 2, "b": 0.5, "x": None})
    df = read_runs(tmp_path, "e")
    assert list(df["a"]) == [1, 2] and "b" in df
    assert len(read_runs(tmp_path)) == 2
    write_parquet(df, tmp_path / "copy.parquet")
    assert len(pd.read_parquet(tmp_path / "copy.parquet")) == 2


def test_run_id_is_stable_and_ignores_where_results_go():
    cfg = {"model": {"name": "m"}, "budget": {"fraction": 0.5}, "experiment_name": "a", "results_dir": "r1"}
    same = {**cfg, "experiment_name": "b", "results_dir": "r2"}
    other = {**cfg, "budget": {"fraction": 0.25}}
    assert run_id(cfg) == run_id(same) != run_id(other)
