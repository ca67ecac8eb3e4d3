"""Inputs checked against the results folder, the model and the data before any weight is read (issue 31 item 2):
path-like names never write outside results_dir, results files of the wrong kind or schema are refused, a replayed
trace of another shape says how it maps (or is refused), eval tasks whose data is unavailable offline are refused.
Each is one line naming the value and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from moelab import runner
from moelab.assembly import plan_run
from moelab.core.errors import ConfigError, ResultsError
from moelab.results.store import read_runs
from tests.test_faults import compose


def _files_outside(tmp_path: Path, results: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if not p.is_relative_to(results) and p != results]


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "..", "a/b"])
def test_a_path_like_experiment_name_is_refused_and_nothing_is_written_outside(tmp_path, name):
    if name == "/abs/path":
        name = str(tmp_path / "abs" / "path")  # absolute, and where a write would be seen
    cfg = compose(tmp_path, f"experiment_name={name}")
    loads = runner.MODELS.loads
    with pytest.raises(ConfigError) as e:
        runner.run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "experiment_name" in msg and repr(name) in msg and "allowed" in msg, msg
    assert runner.MODELS.loads == loads
    assert _files_outside(tmp_path, tmp_path / "results") == []


def test_a_path_like_label_stays_a_column_of_a_row_under_results_dir(tmp_path):
    results = tmp_path / "results"
    with pytest.raises(ConfigError):  # a refused run's row: in results_dir/default, whatever the label says
        runner.run(compose(tmp_path, "label=../../x", "seed=abc"))
    row = runner.run(compose(tmp_path, "label=../../x", "record_trace=true", "workload.num_prompts=1",
                             "workload.batch_size=1", "workload.max_new_tokens=2"))
    assert row["status"] == "ok" and Path(row["trace_path"]).resolve().is_relative_to(results.resolve())
    df = read_runs(results, "default")
    assert df.status.tolist() == ["failed", "ok"] and (df["cfg.label"] == "../../x").all()
    assert _files_outside(tmp_path, results) == []


def _foreign(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"name": ["a"], "value": [1.0]}).to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["folder", "foreign_schema", "foreign_row_file"])
def test_a_results_file_of_the_wrong_kind_or_schema_is_refused_before_measuring(tmp_path, kind):
    exp = tmp_path / "results" / "default"
    if kind == "folder":
        bad = exp / "runs.parquet"
        bad.mkdir(parents=True)
        _foreign(bad / "part-0.parquet")  # a folder pandas would read as a dataset
        expect = "is not a file"
    else:
        bad = _foreign(exp / ("runs.parquet" if kind == "foreign_schema" else "rows/x-1.parquet"))
        expect = "no run_id, status column"
    before = sorted(p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file())
    # model.path does not exist: had the model been looked at first, that would be the error
    with pytest.raises(ResultsError) as e:
        runner.run(compose(tmp_path, "model=hf", "model.path=/nonexistent/model"))
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and expect in msg and "move it aside" in msg, msg
    assert sorted(p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file()) == before  # nothing appended
    assert not os.path.exists(exp / "rows") or kind == "foreign_row_file"


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> str:
    """A trace of the tiny model (4 MoE layers, 16 experts, top_k 2), recorded by a short run."""
    tmp = tmp_path_factory.mktemp("rec")
    row = runner.run(compose(tmp, "record_trace=true", "model.num_layers=4", "workload.num_prompts=1",
                             "workload.batch_size=1", "workload.max_new_tokens=2"))
    return str(row["trace_path"])


def _plan(tmp_path, trace: str, *overrides: str) -> dict:
    row: dict = {}
    cfg = compose(tmp_path, "routing=replay", f"routing.trace={trace}", *overrides)
    plan_run(OmegaConf.to_container(cfg, resolve=True), row=row)
    return row


def test_a_trace_of_another_shape_says_how_it_maps_in_one_note_and_the_row(tmp_path, trace, capsys):
    loads = runner.MODELS.loads
    row = _plan(tmp_path, trace, "model.num_layers=4")  # the recorded shape: nothing to say
    assert row["replay_mapping"] is None and "note:" not in capsys.readouterr().err
    row = _plan(tmp_path, trace, "model.config.num_local_experts=32", "model.config.num_hidden_layers=6",
                "model.config.num_experts_per_tok=4")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {row['replay_mapping']}"], notes
    for part in ("4 MoE layers onto the model's 6", "0->0, 1->0, 2->1, 3->2, 4->2, 5->3", "experts 16 -> 32",
                 "top_k 2 -> 4"):
        assert part in row["replay_mapping"], row["replay_mapping"]
    row = _plan(tmp_path, trace, "model.num_layers=2", "model.config.num_local_experts=8")
    assert "layer: 0->0, 1->2" in row["replay_mapping"] and "r mod 8" in row["replay_mapping"]
    assert runner.MODELS.loads == loads  # all decided from the trace's header and the model's plan


def test_a_trace_that_maps_to_no_expert_choice_is_refused_before_any_weight(tmp_path, trace):
    loads = runner.MODELS.loads
    with pytest.raises(ConfigError) as e:  # 48 experts: 3 per source expert, but top_k=17 is no multiple of 2
        _plan(tmp_path, trace, "model.config.num_local_experts=48", "model.config.num_experts_per_tok=17")
    msg = str(e.value)
    assert "\n" not in msg and "top_k=17 of 48" in msg and "allowed: top_k <= 16, or a multiple of 2 up to 6" in msg
    assert runner.MODELS.loads == loads


def test_an_eval_task_whose_hub_dataset_is_not_cached_is_refused_offline_before_any_weight(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    cached = [Path(datasets.config.HF_DATASETS_CACHE) / "allenai___ai2_arc",
              Path(huggingface_hub.constants.HF_HUB_CACHE) / "datasets--allenai--ai2_arc"]
    if any(p.exists() for p in cached):
        pytest.skip("arc_easy's data is cached on this machine: nothing to refuse")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loads = runner.MODELS.loads
    with pytest.raises(ConfigError) as e:
        runner.run(compose(tmp_path, "eval.tasks=[arc_easy]"))
    msg = str(e.value)
    assert "\n" not in msg and "task arc_easy" in msg and "allenai/ai2_arc (ARC-Easy)" in msg, msg
    assert "HF_HUB_OFFLINE" in msg and "code_line_em" in msg
    assert runner.MODELS.loads == loads
    df = read_runs(tmp_path / "results", "default")
    assert df.status.tolist() == ["failed"] and "arc_easy" in df.error.iloc[0]
