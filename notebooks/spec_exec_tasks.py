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
# # Speculative execution: task accuracy
#
# `python run.py -m +experiment=spec_exec_tasks` (qhs at lookahead distance 1 and 2, speculative execution off
# and on; add `+experiment/predictor=mlp prefetch.path=DIR` for the learned predictors). Each run scores
# lm-evaluation-harness tasks through the offload executor (`eval.tasks`; by default moelab's code-line
# completion tasks cut from the held-out split of the training corpus) and measures perplexity over held-out
# source files against the un-offloaded model. Without speculative execution the scores are the model's own
# and the perplexity delta is 0; with it on they show what executing the predicted experts costs.
#
# The experiment is meant for the trained code models (`model=code_moe` or `model=code_moe_fine`, committed); on
# random weights the scores are near zero and the figure only shows that the pipeline works.
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
fig = plot_spec_exec_tasks(runs, title=f"Speculative execution: task accuracy\n{setup}")
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
