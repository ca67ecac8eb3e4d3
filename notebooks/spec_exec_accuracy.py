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
# # Speculative execution: accuracy vs speed
#
# `python run.py -m +experiment=spec_exec_accuracy` (qhs, lookahead distance 1 and 2, speculative execution off
# and on). With it on, a layer runs the experts that were predicted (and prefetched) instead of waiting for the
# router's choice: fewer demand fetches, at the price of output that differs from the model's. Token
# agreement and perplexity delta are against the un-offloaded model; without speculative execution they are
# exactly 1 and 0.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder. `MOELAB_EXPERIMENT` reads another experiment name
# (`experiment_name=...` of the sweep); `MOELAB_MODEL` picks the model when the experiment holds runs of several
# (default: the latest setup).

# %%
import os

from moelab.analysis.figures import plot_spec_exec, save, spec_exec_table
from moelab.analysis.load import load_runs, results_dir, select_setup

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "spec_exec_accuracy")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
print(f"{len(runs)} runs: {setup}")
print(spec_exec_table(runs).round(4).to_string(index=False))

# %%
fig = plot_spec_exec(runs, title=f"Speculative execution (qhs): accuracy vs speed\n{setup}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
