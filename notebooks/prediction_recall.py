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
# # Top-k prediction recall per layer, per predictor
#
# `python run.py -m +experiment=prediction_recall` (ar_binary, qhs d=1, qhs d=2, oracle; add trained MLPs with
# `+experiment/predictor=mlp prefetch.path=DIR`). Recall of a layer = |experts requested for it before it ran
# ∩ experts it used| / |experts it used|, over decode steps (docs/METRICS.md). Layers a predictor cannot predict
# (qhs has nothing for the first MoE layer) are left out, not drawn as zero.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder. `MOELAB_EXPERIMENT` reads another experiment name
# (`experiment_name=...` of the sweep); `MOELAB_MODEL` picks the model when the experiment holds runs of several
# (default: the latest setup).

# %%
import os

from moelab.analysis.load import load_runs, results_dir, select_setup, with_labels
from moelab.analysis.recall import markdown, plot_recall_by_layer, recall_by_layer

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "prediction_recall")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
runs = with_labels(runs)
runs = runs[runs["prefetch"] != "none"]  # on-demand predicts nothing
print(f"{len(runs)} runs: {setup}")
table = recall_by_layer(runs, label_col="label")
print(markdown(table))

# %%
first = runs.iloc[0]
title = f"Top-k recall per layer\n{first['model']}, {first['layers']} layers, on {first['device']}"
paths = plot_recall_by_layer(table, RESULTS / "figures" / EXPERIMENT, title=title)
print("written:", *paths)
