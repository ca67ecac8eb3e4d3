"""Fault injection: no finished row is ever lost, and results that could not be stored stop a run before any
weight is read. Corrupt, unwritable and locked results files, a row that cannot be written at the end, SIGINT
and SIGTERM in a run and in a sweep (interrupted row, same command resumes), many concurrent writers."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import hydra
import pandas as pd
import pytest

from moelab import runner, sweep
from moelab.analysis.load import latest_rows
from moelab.command import run_from_hydra
from moelab.core.errors import ResultsError
from moelab.interrupts import Interrupts
from moelab.results import preflight, safekeeping, store
from moelab.results.store import append_row, read_runs, write_parquet
from tests.conftest import ROOT
from tests.test_cli import QUICK, run_cli

FAST = [*QUICK, "device=cpu", "reference=false", "workload.ppl_tokens=0"]


def compose(tmp_path, *overrides: str):
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra.compose("config", overrides=[*FAST, f"results_dir={tmp_path / 'results'}", *overrides])


def corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1 this is not a parquet file")
    return path


@pytest.mark.parametrize("where", ["runs.parquet", "rows/x-1.parquet"])
def test_an_unreadable_results_file_stops_the_run_before_any_weight_is_read(tmp_path, where):
    bad = corrupt(tmp_path / "results" / "default" / where)
    # model.path does not exist: had the model been looked at first, that would be the error
    cfg = compose(tmp_path, "model=hf", "model.path=/nonexistent/model")
    with pytest.raises(ResultsError, match="cannot be read") as e:
        runner.run(cfg)
    assert str(bad) in str(e.value) and "move it aside" in str(e.value)
    assert bad.read_bytes().startswith(b"PAR1 this")  # left as it was: nothing appended, nothing replaced
    assert not (tmp_path / "results" / "default" / "rows").exists() or where.startswith("rows")


@pytest.mark.parametrize("kind", ["a_file", "under_proc"])
def test_an_unwritable_results_folder_stops_the_run(tmp_path, kind):
    target = tmp_path / "a_file" if kind == "a_file" else "/proc/moelab-results"
    if kind == "a_file":
        target.write_text("")
    with pytest.raises(ResultsError, match="cannot be written") as e:
        preflight.check_results({"results_dir": str(target), "experiment_name": "e"})
    assert f"{target}/e" in str(e.value) and "results_dir=" in str(e.value)


def test_a_corrupt_results_file_stops_a_sweep_at_once_with_one_line(tmp_path):
    bad = corrupt(tmp_path / "results" / "default" / "runs.parquet")
    p = run_cli(tmp_path, "budget.gpu_experts=4,6", multirun=True)
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in p.stderr, p.stderr
    assert "sweep done" not in p.stdout and bad.read_bytes().startswith(b"PAR1 this")


def _fail_runs_parquet(monkeypatch):
    def disk_full(path, row):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("moelab.loggers.local.append_row", disk_full)


def test_a_row_that_cannot_be_written_at_the_end_goes_to_a_fallback_file(tmp_path, monkeypatch):
    cfg = compose(tmp_path, "experiment_name=full")
    _fail_runs_parquet(monkeypatch)  # the disk fills up while the run measures
    with pytest.raises(safekeeping.RowNotStoredError) as e:
        runner.run(cfg)
    saved = safekeeping.LAST
    assert saved is not None and saved.fallback and "No space left" in saved.reason
    assert str(saved.path) in str(e.value) and saved.path.parent == tmp_path / "results" / "full" / "rows"
    rows = read_runs(tmp_path / "results", "full")  # a row file: found by every reader, merged by `sweep merge`
    assert rows.status.tolist() == ["ok"] and rows.tpot_ms.iloc[0] > 0
    assert f"python -m moelab.sweep merge {tmp_path / 'results'} full" in str(e.value)
    assert sweep.main(["merge", str(tmp_path / "results"), "full"]) == 0  # the command the line gives
    assert not list(saved.path.parent.glob("*.parquet"))
    assert pd.read_parquet(tmp_path / "results" / "full" / "runs.parquet").run_id.tolist() == rows.run_id.tolist()


def test_the_command_exits_non_zero_naming_the_fallback_file(tmp_path, monkeypatch, capsys):
    cfg = compose(tmp_path)
    _fail_runs_parquet(monkeypatch)
    with pytest.raises(SystemExit) as e:
        run_from_hydra(cfg)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(safekeeping.LAST.path) in err


def test_when_the_results_folder_cannot_be_written_the_row_goes_to_the_temp_folder_and_sweep_merge_finds_it(
        tmp_path, monkeypatch):
    from moelab.loggers.local import LocalLogger

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # the system temp folder, as TMPDIR sets it below
    _fail_runs_parquet(monkeypatch)
    rows_writable = False
    real_write_row_file = safekeeping.write_row_file

    def rows_folder(exp_dir, row):
        if not rows_writable:
            raise OSError(28, "No space left on device", str(exp_dir))
        return real_write_row_file(exp_dir, row)

    monkeypatch.setattr(safekeeping, "write_row_file", rows_folder)
    monkeypatch.chdir(tmp_path)  # never the current folder (a clone's root) any more
    results = tmp_path / "results"
    (results / "e").mkdir(parents=True)  # the run's preflight made it
    row = {"run_id": "r1", "experiment": "e", "status": "ok", "tpot_ms": 1.5}
    saved = safekeeping.record(row, None, LocalLogger(str(results), console=False), results / "e")
    assert saved.fallback and saved.path.parent == safekeeping.stash_dir(results / "e")
    assert saved.path.is_relative_to(tmp) and saved.path.name.startswith("moelab-row-r1-")
    assert pd.read_parquet(saved.path).to_dict("records") == [row]
    line = saved.line()  # one line: where it is and the command that brings it back
    assert "\n" not in line and str(saved.path) in line and "temporary folder" in line
    assert f"python -m moelab.sweep merge {results} e" in line
    assert list(tmp_path.glob("moelab-row-*")) == []

    rows_writable = True  # room again: the printed command, as a user types it
    p = subprocess.run([sys.executable, "-m", "moelab.sweep", "merge", str(results), "e"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)}, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (f"{results / 'e'}: merged 1 row files (1 of them from {saved.path.parent}) "
                                "into runs.parquet, which now holds 1 rows")
    assert not saved.path.exists()
    merged = pd.read_parquet(results / "e" / "runs.parquet")
    assert merged.to_dict("records") == [row]
    again = subprocess.run([sys.executable, "-m", "moelab.sweep", "merge", str(results)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)}, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == \
        f"{results / 'e'}: no row files to merge; runs.parquet unchanged"


def test_results_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o002)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "runs.parquet")
        append_row(tmp_path / "e" / "runs.parquet", {"a": 1})
    finally:
        os.umask(old)
    for f in (tmp_path / "runs.parquet", tmp_path / "e" / "runs.parquet"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o664


HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_writer_waits_for_a_lock_held_by_another_process_and_loses_nothing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "e" / "runs.parquet"
    append_row(path, {"i": 0})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path) + ".lock", "1.5"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setattr(store, "LOCK_NOTICE_S", 0.3)
    t0 = time.monotonic()
    append_row(path, {"i": 1})
    assert time.monotonic() - t0 > 1.0  # it waited for the other process ...
    assert holder.wait(10) == 0
    assert pd.read_parquet(path)["i"].tolist() == [0, 1]  # ... and nothing was lost
    assert f"waiting for the lock on {path}" in capsys.readouterr().out


@pytest.fixture
def signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    Interrupts.installed, Interrupts.in_run, Interrupts.pending = False, False, None


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_a_single_run_records_it_interrupted(tmp_path, signal_handlers, capsys, sig, code):
    cfg = compose(tmp_path, "workload.max_new_tokens=400", "experiment_name=sig")

    def send_when_running():
        while not Interrupts.in_run:
            time.sleep(0.01)
        time.sleep(0.3)
        os.kill(os.getpid(), sig)

    threading.Thread(target=send_when_running, daemon=True).start()
    with pytest.raises(SystemExit) as e:
        run_from_hydra(cfg)
    assert e.value.code == code
    df = read_runs(tmp_path / "results", "sig")
    assert df.status.tolist() == ["interrupted"], df.error.tolist()
    assert "recorded as interrupted" in capsys.readouterr().err


def test_sigterm_in_a_sweep_keeps_finished_rows_and_the_same_command_resumes(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), "-m", *QUICK, "workload.max_new_tokens=16", "device=cpu",
            "reference=false", f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "experiment_name=term",
            "budget.gpu_experts=4,6"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and read_runs(tmp_path / "results", "term").empty:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be terminated"
    proc.send_signal(signal.SIGTERM)  # what a SLURM time limit sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    df = read_runs(tmp_path / "results", "term")
    assert "ok" in set(df.status) and set(df.status) <= {"ok", "interrupted"}, df.status.tolist()
    done = set(df.run_id[df.status == "ok"])
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("skipped run ") == len(done)
    final = latest_rows(read_runs(tmp_path / "results", "term"))
    assert len(final) == 2 and (final.status == "ok").all()


def test_a_pass_that_fails_after_the_timed_one_keeps_its_measurements(tmp_path, monkeypatch):
    """Perplexity breaks after generation was measured: the failed row still holds TPOT, bytes, agreement."""
    cfg = compose(tmp_path, "experiment_name=late", "workload.ppl_tokens=16", "reference=true")

    plain_ppl, calls = runner.corpus_perplexity, []

    def broken(*args, **kwargs):  # the reference pass's perplexity works, the offloaded accuracy pass's breaks
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("perplexity broke")
        return plain_ppl(*args, **kwargs)

    monkeypatch.setattr("moelab.runner.corpus_perplexity", broken)
    with pytest.raises(RuntimeError, match="perplexity broke"):
        runner.run(cfg)
    row = read_runs(tmp_path / "results", "late").iloc[0]
    assert row.status == "failed" and "perplexity broke" in row.error
    assert row.tpot_ms > 0 and row.h2d_bytes_prefill > 0 and row.token_agreement == 1.0
