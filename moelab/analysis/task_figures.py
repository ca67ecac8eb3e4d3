"""Task accuracy, token agreement and perplexity delta per predictor and speculative-execution mode
(experiment spec_exec_tasks: none, router weights over the predicted set, or the predicted weights)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from moelab.analysis.figures import _title, new_figure
from moelab.analysis.load import with_labels

MODES = ("none", "router", "predicted")
MODE_NAMES = {"none": "off (the router's choice, exact)", "router": "predicted experts, router weights",
              "predicted": "predicted experts and weights"}
OTHER_PANELS = {"token_agreement": "token agreement", "ppl_delta": "perplexity delta",
                "spec_exec_changed": "experts changed (share)"}


def task_columns(rows: pd.DataFrame) -> list[str]:
    """The rows' task-score columns, stderr left out (`task_score.<task>.<metric>`)."""
    return sorted(c for c in rows if c.startswith("task_score.") and not c.endswith("_stderr"))


def _mode(rows: pd.DataFrame) -> pd.Series:
    """Each row's speculative-execution mode (older rows have only the on/off flag: on was `router`)."""
    if "speculative_mode" in rows:
        return rows["speculative_mode"].fillna("none").astype(str)
    return rows["speculative_execution"].astype(bool).map({False: "none", True: "router"})


def spec_exec_task_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (predictor label, speculative mode): every task score, agreement, ppl delta, changes, TPOT."""
    df = with_labels(rows)
    table = pd.DataFrame({"label": df["label"], "speculative_mode": _mode(df)})
    for c in [*task_columns(df), *OTHER_PANELS, "tpot_ms"]:
        table[c.removeprefix("task_score.")] = df[c].astype(float) if c in df else np.nan
    table = table.groupby(["label", "speculative_mode"], sort=False).mean().reset_index()
    first_seen = {label: i for i, label in enumerate(dict.fromkeys(table["label"]))}
    key = table.assign(_l=table["label"].map(first_seen),
                       _m=table["speculative_mode"].map({m: i for i, m in enumerate(MODES)}).fillna(len(MODES)))
    return table.loc[key.sort_values(["_l", "_m"], kind="stable").index].reset_index(drop=True)


def plot_spec_exec_tasks(rows: pd.DataFrame, title: str = "Speculative execution: task accuracy") -> Figure:
    """Grouped bars per predictor, one bar per speculative mode: each task accuracy, token agreement, perplexity
    delta and the share of executed experts that differ from the router's choice."""
    table = spec_exec_task_table(rows)
    panels = [c.removeprefix("task_score.") for c in task_columns(rows)
              if c.endswith((".exact_match", ".acc", ".acc_norm"))] + list(OTHER_PANELS)
    fig = new_figure(2.9 * len(panels), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    labels = list(dict.fromkeys(table["label"]))
    modes = [m for m in MODES if m in set(table["speculative_mode"])]
    x = np.arange(len(labels))
    width = 0.8 / max(len(modes), 1)
    for ax, col in zip(axes, panels):
        for i, mode in enumerate(modes):
            part = table[table["speculative_mode"] == mode].set_index("label").reindex(labels)
            ax.bar(x + (i - (len(modes) - 1) / 2) * width, part[col].to_numpy(dtype=float), width,
                   label=MODE_NAMES.get(mode, mode))
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="small")
        ax.set_ylabel(OTHER_PANELS.get(col, col))
        ax.grid(True, axis="y", alpha=0.3)
        if col not in ("ppl_delta", "spec_exec_changed"):  # accuracies and agreement
            ax.set_ylim(0.0, 1.05)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(modes), fontsize="small")
    _title(fig, title, rows)
    return fig
