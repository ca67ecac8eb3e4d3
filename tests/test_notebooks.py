"""Every figure regenerates: each experiment in conf/experiment/ runs as a (shortened) sweep on the tiny model on
the CPU, then each notebook in notebooks/ is executed headless (as the plain script it is, jupytext percent
format) on those results and must write its PNG and PDF."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from moelab.core import registry
from tests.conftest import ROOT
from tests.test_cli import run_cli, runs

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))
# shorter sweeps than the experiments' own, same code paths (the notebook draws whatever points exist)
SHORTER = {
    "prediction_recall": ["model=tiny", "+experiment/predictor=glob(*,exclude=mlp)"],  # tiny has no committed MLPs
    "spac_signals": ["model=tiny", "decoding.gamma=2,4"],
    "budget_sweep": ["policy=on_demand,oracle", "budget.fraction=0.25,0.5"],
    "spec_exec_accuracy": ["prefetch.distance=1", "workload.num_prompts=2"],  # both workloads
    "spac_ablation": ["+experiment/spac_variant=spac,sd_on_demand,ar_binary", "workload=builtin"],
    # the replays keep their trace's workload (6 prompts x 32 tokens); the tiny model has code_moe's 16 experts, top-2
    "spac_replay": ["model=tiny", "+experiment/spac_variant=ar_on_demand,spac", "reference=false"],
    "peers": ["model=tiny", "+experiment/system=on_demand,spac", "budget.fraction=0.25", "reference=false"],
    "spec_exec_tasks": ["+experiment/predictor=qhs_d1", "execution.speculative=none,predicted",
                        "workload.num_prompts=1", "workload.prompt_lines=4", "workload.ppl_docs=1", "eval.limit=2",
                        "eval.max_length=96", "eval.gen_kwargs={max_gen_toks:4}", "eval.bootstrap_iters=0"],
}


def test_every_experiment_has_its_notebook():
    assert EXPERIMENTS and EXPERIMENTS == NOTEBOOKS


@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory):
    """Results of every experiment, each swept once with the shortened lists above."""
    tmp = tmp_path_factory.mktemp("sweeps")
    for name in EXPERIMENTS:
        if name == "spac_ablation" and "spac" not in registry.names("balancer"):
            continue
        p = run_cli(tmp, f"+experiment={name}", *SHORTER.get(name, []), multirun=True)
        assert p.returncode == 0, (name, p.stderr[-3000:])
        df = runs(tmp, name)
        assert (df.status == "ok").all(), (name, df.error.tolist())
    return tmp / "results"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless_and_writes_its_figure(sweep_results, name):
    if not (sweep_results / name / "runs.parquet").exists():
        pytest.skip(f"experiment {name} was not run")
    figures = sweep_results / "figures"
    for ext in ("png", "pdf"):
        (figures / f"{name}.{ext}").unlink(missing_ok=True)
    env = {**os.environ, "MOELAB_RESULTS": str(sweep_results), "MPLBACKEND": "Agg"}
    env.pop("MOELAB_EXPERIMENT", None)
    env.pop("MOELAB_MODEL", None)
    p = subprocess.run([sys.executable, str(ROOT / "notebooks" / f"{name}.py")], capture_output=True, text=True,
                       cwd=ROOT / "notebooks", env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "written:" in p.stdout and "tiny-mixtral" in p.stdout
    for ext in ("png", "pdf"):
        out = Path(figures / f"{name}.{ext}")
        assert out.exists() and out.stat().st_size > 5000, out


def test_accelerate_rows_join_the_peers_figure(sweep_results):
    """benchmarks/peers.py adds transformers + accelerate rows at the peers experiment's points (tiny model on the
    CPU: accelerate offloads to disk here), exact, really offloading, each with the on-demand row's floor."""
    from moelab.analysis.figures import peers_rows
    from moelab.analysis.load import load_runs

    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--budgets", "0.25", "--tokens", "3",
                        "model=tiny", "device=cpu", f"results_dir={sweep_results}"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    acc = pd.read_parquet(sweep_results / "peers" / "accelerate.parquet")
    assert acc.status.tolist() == ["ok"], acc.error.tolist()
    assert acc.device_name.tolist() == [load_runs(sweep_results, "peers").device_name.iloc[0]]  # the figure's filter
    assert acc.token_agreement.tolist() == [1.0] and (acc.accelerate_streamed_bytes > 0).all()
    rows = peers_rows(load_runs(sweep_results, "peers"), acc)
    on_demand = rows[rows.policy == "on_demand"].set_index("budget")
    row = rows[rows.policy == "hf_accelerate"].iloc[0]
    # on a CPU there is no floor (host time is all there is): the accelerate row's is NaN as on-demand's
    assert on_demand.floor_note[0.25] == "cpu: host time is all there is"
    assert pd.isna(on_demand.floor_ms_per_token[0.25]) and pd.isna(row.floor_ms_per_token) and pd.isna(row.efficiency)
