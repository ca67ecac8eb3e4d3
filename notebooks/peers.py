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
# # moelab against the systems users know, and against the floor
#
# `python run.py -m +experiment=peers`: on-demand loading, next-layer gate prefetch, Fiddler (static hot set + CPU
# for cold experts), Speculating Experts, MoE-SpAc and the oracle (`conf/experiment/system/`) at several GPU expert
# budgets, replaying the committed code_moe traces into full-size shapes, each row with its floor (Belady bytes
# over the copy engine's calibrated bandwidth, or the plain model's graph-captured step if larger) and efficiency =
# floor / time per committed token. A floor is NaN where it bounds nothing (CPU experts) and on a CPU, where there
# is none (`floor_note` says why); NaN floors are not drawn. The transformers + accelerate rows come from
# `python benchmarks/peers.py` (same points), when it was run; each takes the floor of the on-demand row of its
# model and budget.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/): the experiment's
# runs and `peers/accelerate.parquet`; writes the figure as PNG and PDF to its `figures/` folder, one panel per
# model. `MOELAB_EXPERIMENT` reads another experiment name.

# %%
import os

import pandas as pd

from moelab.analysis.figures import peers_rows, peers_table, plot_peers, save
from moelab.analysis.load import describe_setup, load_runs, results_dir

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "peers")

# %%
runs = load_runs(RESULTS, EXPERIMENT)
device = runs.sort_values("started_at")["device_name"].iloc[-1]
runs = runs[runs["device_name"] == device]  # one device
accelerate_file = RESULTS / EXPERIMENT / "accelerate.parquet"
accelerate = pd.read_parquet(accelerate_file) if accelerate_file.exists() else None
if accelerate is not None:
    accelerate = accelerate[(accelerate["device_name"] == device) & (accelerate["status"] == "ok")]
for _, part in runs.groupby("model", sort=False):
    print(f"{len(part)} runs: {describe_setup(part.iloc[0])}")
rows = peers_rows(runs, accelerate)
print(peers_table(rows).round(3).to_string(index=False))

# %%
fig = plot_peers(rows, title=f"Decode tokens/s vs GPU expert budget, on {device}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
