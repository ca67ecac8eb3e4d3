"""Every figure regenerates: each experiment in conf/experiment/ runs as a (shortened) sweep on the tiny model on
the CPU, then each notebook in notebooks/ is executed headless (as the plain script it is, jupytext percent
format) on those results and must write its PNG and PDF."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moelab.core import registry
from tests.conftest import ROOT
from tests.test_cli import run_cli, runs

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
BENCHMARK_NOTEBOOKS = ["peers"]  # notebooks of a benchmark script's results, not of an experiment sweep
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py") if p.stem not in BENCHMARK_NOTEBOOKS)
# shorter sweeps than the experiments' own, same code paths (the notebook draws whatever points exist)
SHORTER = {
    "prediction_recall": ["model=tiny", "+experiment/predictor=glob(*,exclude=mlp)"],  # tiny has no committed MLPs
    "spac_signals": ["model=tiny", "decoding.gamma=2,4"],
    "budget_sweep": ["policy=on_demand,oracle", "budget.fraction=0.25,0.5"],
    "spec_exec_accuracy": ["prefetch.distance=1", "workload.num_prompts=2"],  # both workloads
    "spac_ablation": ["+experiment/spac_variant=spac,sd_on_demand,ar_binary", "workload=builtin"],
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


def test_peers_benchmark_and_its_notebook(tmp_path):
    """benchmarks/peers.py --quick (tiny shapes on the CPU: accelerate offloads to disk here) gives every system a
    row with its floor, then notebooks/peers.py draws the figure from the parquet."""
    out = tmp_path / "results" / "bench_peers"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick", "--out", str(out),
                        "--models", "mixtral:3", "--budgets", "0.25,0.5"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    import pandas as pd

    df = pd.read_parquet(out / "peers.parquet")
    systems = {"hf_accelerate", "on_demand", "gate_prefetch", "fiddler", "spec_experts", "spac", "oracle"}
    assert set(df.policy) == systems and len(df) == 2 * len(systems), p.stdout[-3000:]
    assert (df.floor_ms_per_token > 0).all() and df.efficiency.notna().all()
    exact = df[df.policy != "spec_experts"]  # speculative execution is the one inexact system
    assert (exact.token_agreement == 1.0).all(), exact[["policy", "token_agreement"]]
    assert (df[df.policy == "hf_accelerate"].accelerate_streamed_bytes > 0).all()  # accelerate really offloaded
    env = {**os.environ, "MOELAB_RESULTS": str(tmp_path / "results"), "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, str(ROOT / "notebooks" / "peers.py")], capture_output=True, text=True,
                       cwd=ROOT / "notebooks", env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for ext in ("png", "pdf"):
        assert (tmp_path / "results" / "figures" / f"peers.{ext}").stat().st_size > 5000
