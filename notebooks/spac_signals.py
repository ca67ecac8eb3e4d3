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
# # MoE-SpAc's frequency map against the binary signal
#
# `python run.py -m +experiment=spac_signals` (both committed reference models with the shared draft, gamma 2, 4
# and 8). On the same verification passes, per layer: how much of the next pass's experts each signal names
# (recall) — the binary signal one autoregressive step gives (the experts of the pass's first token), the
# frequency map's top experts (as many as the binary signal names: the same prefetch budget) and the whole map
# (docs/METRICS.md, `signal_*`).
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder, one column per model. `MOELAB_EXPERIMENT` reads another
# experiment name; `MOELAB_MODEL` draws only that model.

# %%
import os

from moelab.analysis.load import describe_setup, load_runs, results_dir
from moelab.analysis.signals import plot_signals, signal_by_layer, signal_table

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "spac_signals")

# %%
runs = load_runs(RESULTS, EXPERIMENT)
if os.environ.get("MOELAB_MODEL"):
    runs = runs[runs["model"] == os.environ["MOELAB_MODEL"]]
runs = runs[runs["device_name"] == runs.sort_values("started_at")["device_name"].iloc[-1]]  # one device
for _, part in runs.groupby("model", sort=False):
    print(f"{len(part)} runs: {describe_setup(part.iloc[0])}")
print(signal_table(runs).round(3).to_string())
layers = signal_by_layer(runs).pivot_table(index=["model", "gamma", "signal"], columns="layer", values="value")
print(layers.round(3).to_string())

# %%
title = f"MoE-SpAc's signals: recall of the next verification pass's experts, on {runs.iloc[0]['device_name']}"
print("written:", *plot_signals(runs, RESULTS / "figures" / EXPERIMENT, title=title))
