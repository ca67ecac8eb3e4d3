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
# # Copy/compute timeline of decode steps
#
# `python run.py -m +experiment=decode_timeline` (on-demand vs qhs prefetch, one run each). From each run's
# per-step table (`results/<experiment>/<run_id>/steps.parquet`): the compute stream's time split into compute,
# stall (waiting for a copy) and host gap (the per-layer read of the router's choice), and the copy stream's time
# split into copies hidden under compute and exposed ones. Left: the median decode step as two lanes; right:
# every decode step. The table holds per-step totals, so the lanes show amounts, not the order of events.
#
# Reads `$MOELAB_RESULTS` (default: `results/`, from the repository root or from notebooks/) and writes the
# figure as PNG and PDF to its `figures/` folder. `MOELAB_EXPERIMENT` reads another experiment name
# (`experiment_name=...` of the sweep); `MOELAB_MODEL` picks the model when the experiment holds runs of several
# (default: the latest setup).

# %%
import os

from moelab.analysis.figures import plot_decode_timeline, save, timeline_table
from moelab.analysis.load import load_runs, read_steps, results_dir, select_setup, with_labels

RESULTS = results_dir()
EXPERIMENT = os.environ.get("MOELAB_EXPERIMENT", "decode_timeline")

# %%
runs, setup = select_setup(load_runs(RESULTS, EXPERIMENT))
runs = with_labels(runs)
print(f"{len(runs)} runs: {setup}")
steps = {row.label: read_steps(RESULTS, EXPERIMENT, row.run_id) for row in runs.itertuples()}
for label, table in steps.items():
    print(f"\n{label}: decode steps (ms)")
    print(timeline_table(table).describe().loc[["mean", "50%", "max"]].round(3).to_string())

# %%
fig = plot_decode_timeline(steps, title=f"Where a decode step's time goes\n{setup}", rows=runs)
print("written:", *save(fig, RESULTS / "figures" / EXPERIMENT))
fig  # noqa: B018  (the cell shows the figure in Jupyter)
