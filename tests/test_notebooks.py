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
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))
# shorter sweeps than the experiments' own, same code paths (the notebook draws whatever points exist)
SHORTER = {
    "budget_sweep": ["policy=on_demand,oracle", "budget.fraction=0.25,0.5"],
    "spec_exec_accuracy": ["prefetch.distance=1"],
    "spac_ablation": ["+experiment/spac_variant=spac,sd_on_demand,ar_binary"],
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
