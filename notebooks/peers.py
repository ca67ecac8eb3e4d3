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
# `python benchmarks/peers.py` (on the GPU machine): transformers + accelerate offload, on-demand loading,
# next-layer gate prefetch, Fiddler (static hot set + CPU for cold experts), Speculating Experts, MoE-SpAc and
# the oracle, side by side on one model at several GPU expert budgets, with each row's floor (Belady-optimal
# bytes over the measured H2D bandwidth, or GPU compute if larger) and efficiency = floor / TPOT.
#
# Reads `$MOELAB_RESULTS/bench_peers/peers.parquet` (default `results/`, from the repository root or from
# notebooks/), or `$MOELAB_PEERS` (the parquet itself), and writes the figure as PNG and PDF to
# `$MOELAB_RESULTS/figures/peers`.

# %%
import os
from pathlib import Path

import pandas as pd

from moelab.analysis.figures import peers_table, plot_peers, save
from moelab.analysis.load import results_dir

RESULTS = results_dir()
PEERS = Path(os.environ.get("MOELAB_PEERS", RESULTS / "bench_peers" / "peers.parquet"))

# %%
rows = pd.read_parquet(PEERS)
print(f"{len(rows)} rows from {PEERS}")
print(peers_table(rows).round(3).to_string(index=False))

# %%
device = rows["device"].iloc[0] if "device" in rows else ""
fig = plot_peers(rows, title=f"Decode tokens/s vs GPU expert budget {device}".strip())
print("written:", *save(fig, RESULTS / "figures" / "peers"))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
