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
# # Top-k prediction recall per layer, per predictor, per model
#
# `python run.py -m +experiment=prediction_recall`: every predictor of `conf/experiment/predictor/` (ar_binary,
# qhs d=1, qhs d=2, qhs layer_output, oracle; add trained MLPs with `+experiment/predictor=mlp prefetch.path=DIR`)
# on both committed reference models (code_moe: 16 experts top-2; code_moe_fine: 64 experts top-8). Recall of a
# layer = |experts requested for it before it ran ∩ experts it used| / |experts it used|, over decode steps
# (docs/METRICS.md). Layers a predictor cannot predict (qhs has nothing for the first MoE layer) are left out,
# not drawn as zero.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder, one panel per model. `MOELAB_EXPERIMENT` reads another
# experiment name (`experiment_name=...` of the sweep); `MOELAB_MODEL` draws only that model.

# %%
import os

from moelab.analysis.load import describe_setup, load_runs, results_dir, with_labels
from moelab.analysis.recall import markdown, plot_recall_by_layer, predictor_labels, recall_by_layer

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "prediction_recall")

# %%
runs = with_labels(load_runs(RESULTS, EXPERIMENT))
runs = runs[runs["prefetch"] != "none"]  # on-demand predicts nothing
order = {label: i for i, label in enumerate(predictor_labels())}
runs = runs.sort_values("label", key=lambda labels: labels.map(lambda x: order.get(x, len(order))), kind="stable")
if os.environ.get("MOELAB_MODEL"):
    runs = runs[runs["model"] == os.environ["MOELAB_MODEL"]]
runs = runs[runs["device_name"] == runs.sort_values("started_at")["device_name"].iloc[-1]]  # one device
tables = {}
for model, part in runs.groupby("model", sort=False):
    print(f"{len(part)} runs: {describe_setup(part.iloc[0])}")
    tables[model] = recall_by_layer(part, label_col="label")
    print(markdown(tables[model]))

# %%
first = runs.iloc[0]
title = f"Top-k prediction recall per layer, decode steps, on {first['device_name']}"
panels = {f"{m} ({runs[runs.model == m].iloc[0]['experts']} experts, top-{runs[runs.model == m].iloc[0]['top_k']})": t
          for m, t in tables.items()}
paths = plot_recall_by_layer(panels, RESULTS / "figures" / EXPERIMENT, title=title)
print("written:", *paths)
