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
# # MoE-SpAc against the AR and SD baselines at real expert sizes
#
# `python run.py -m +experiment=spac_replay`: every variant of `conf/experiment/spac_variant/` (autoregressive and
# speculative-decoding baselines, the full method, each part swapped for its baseline, gamma 2 and 8) in
# Mixtral-8x7B shapes (random weights, real expert sizes) replaying the committed code_moe traces: routing and draft
# acceptance are the trained pair's, transfers have real sizes. Tokens/s counts committed tokens; `vs SD` and
# `vs AR` are its ratio to the speculative-decoding and autoregressive on-demand baselines of the same setup.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder. `MOELAB_EXPERIMENT` reads another experiment name;
# `MOELAB_MODEL` picks the model shapes when the experiment holds runs of several (default: the latest setup).

# %%
import os

from moelab.analysis.figures import plot_spac_ablation, save, spac_table
from moelab.analysis.load import load_runs, results_dir, select_setup

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "spac_replay")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
print(f"{len(runs)} runs: {setup}")
table = spac_table(runs)
speed = table.set_index("label")["tokens_per_s"]
for name, baseline in (("vs SD", "SD + on-demand"), ("vs AR", "AR + on-demand")):
    table[name] = table["tokens_per_s"] / speed.get(baseline, float("nan"))
print(table.round(3).to_string(index=False))

# %%
fig = plot_spac_ablation(runs, title=f"MoE-SpAc and its baselines, routing and acceptance replayed\n{setup}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
