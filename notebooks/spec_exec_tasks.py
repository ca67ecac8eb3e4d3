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
# # Speculative execution: accuracy per predictor and weights mode
#
# `python run.py -m +experiment=spec_exec_tasks` (model=code_moe; `model=code_moe_fine` for the other reference
# model): three predictors (qhs d=1 on the post-attention state, qhs on the released code's default-vector state,
# the committed MLPs) x three ways of running layer l+1: `none` (the router's choice: exact), `router` (the
# predicted experts weighted by the true router renormalised over them) and `predicted` (the predicted experts with
# the predictor's own softmax weights, as Speculating Experts' released code runs them). Each run scores
# lm-evaluation-harness tasks through the offload executor (moelab's code-line completion tasks cut from the
# held-out split of the training corpus), token agreement with the un-offloaded model, perplexity over held-out
# source files against it, and the share of executed experts that differ from the router's choice. Without
# speculative execution the scores are the model's own and the perplexity delta is 0.
#
# The experiment is meant for the trained code models; on random weights the scores are near zero and the figure
# only shows that the pipeline works.
#
# Reads `$MOELAB_RESULTS` (default: `results/`) and writes the figure as PNG and PDF to its `figures/` folder;
# `MOELAB_EXPERIMENT` and `MOELAB_MODEL` pick another experiment name or model.

# %%
import os

from moelab.analysis.figures import save
from moelab.analysis.load import load_runs, results_dir, select_setup
from moelab.analysis.task_figures import plot_spec_exec_tasks, spec_exec_task_table

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "spec_exec_tasks")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
print(f"{len(runs)} runs: {setup}")
print(spec_exec_task_table(runs).round(4).to_string(index=False))

# %%
fig = plot_spec_exec_tasks(runs, title=f"Speculative execution: accuracy by predictor and weights\n{setup}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
