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
# # MoE-SpAc ablations
#
# `python run.py -m +experiment=spac_ablation`: the full method, then each part swapped for its baseline
# (LRU instead of utility eviction, GPU-only instead of the CPU/GPU balancer), next to the speculative-decoding
# and autoregressive baselines. Tokens/s counts accepted tokens. On the embedded default the draft is random
# (acceptance near zero): use a trained target + draft pair for numbers that mean something.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder. `MOELAB_EXPERIMENT` reads another experiment name
# (`experiment_name=...` of the sweep); `MOELAB_MODEL` picks the model when the experiment holds runs of several
# (default: the latest setup).

# %%
import os

from moelab.analysis.figures import plot_spac_ablation, save, spac_table
from moelab.analysis.load import load_runs, results_dir, select_setup

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "spac_ablation")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
print(f"{len(runs)} runs: {setup}")
print(spac_table(runs).round(3).to_string(index=False))

# %%
fig = plot_spac_ablation(runs, title=f"MoE-SpAc ablations\n{setup}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
