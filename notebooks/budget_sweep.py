# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Hit rate and TPOT vs GPU expert budget, per prefetch policy
#
# `python run.py -m +experiment=budget_sweep` (4 policies x 3 budgets;
# `model=mixtral model.random_init=true model.num_layers=4` on the GPU machine for real timings). Each line is
# a prefetch policy; `oracle` is the bound, `on_demand` the baseline; the dashed line in the TPOT panel is the
# un-offloaded model.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder. `MOELAB_EXPERIMENT` reads another experiment name
# (`experiment_name=...` of the sweep); `MOELAB_MODEL` picks the model when the experiment holds runs of several
# (default: the latest setup).

# %%
import os

from moelab.analysis.figures import budget_table, plot_budget_sweep, save
from moelab.analysis.load import load_runs, results_dir, select_setup

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "budget_sweep")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
print(f"{len(runs)} runs: {setup}")
table = budget_table(runs)
print(table.round(3).to_string(index=False))

# %%
fig = plot_budget_sweep(runs, title=f"Hit rate and TPOT vs GPU expert budget\n{setup}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
