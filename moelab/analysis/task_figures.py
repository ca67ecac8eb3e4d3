"""Task accuracy and perplexity delta with speculative execution off and on (experiment spec_exec_tasks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from moelab.analysis.figures import _title, new_figure
from moelab.analysis.load import with_labels


def task_columns(rows: pd.DataFrame) -> list[str]:
    """The rows' task-score columns, stderr left out (`task_score.<task>.<metric>`)."""
    return sorted(c for c in rows if c.startswith("task_score.") and not c.endswith("_stderr"))


def spec_exec_task_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (predictor label, speculative execution): every task score, ppl delta, TPOT."""
    df = with_labels(rows)
    cols = task_columns(df)
    table = pd.DataFrame({"label": df["label"], "speculative_execution": df["speculative_execution"].astype(bool)})
    for c in [*cols, "ppl_delta", "token_agreement", "tpot_ms"]:
        table[c.removeprefix("task_score.")] = df[c].astype(float) if c in df else np.nan
    keys = ["label", "speculative_execution"]
    return table.groupby(keys, sort=False).mean().reset_index()


def plot_spec_exec_tasks(rows: pd.DataFrame, title: str = "Speculative execution: task accuracy") -> Figure:
    """Grouped bars per predictor, speculative execution off vs on: each task score, then ppl delta and TPOT."""
    table = spec_exec_task_table(rows)
    panels = [c.removeprefix("task_score.") for c in task_columns(rows)
              if c.endswith((".exact_match", ".acc", ".acc_norm"))] + ["ppl_delta", "tpot_ms"]
    fig = new_figure(3.0 * len(panels), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    labels = list(dict.fromkeys(table["label"]))
    x = np.arange(len(labels))
    width = 0.38
    for ax, col in zip(axes, panels):
        for i, on in enumerate((False, True)):
            part = table[table["speculative_execution"] == on].set_index("label").reindex(labels)
            ax.bar(x + (i - 0.5) * width, part[col].to_numpy(dtype=float), width,
                   label="speculative execution" if on else "fetch the router's choice")
        ax.set_xticks(x, labels)
        ax.set_ylabel({"ppl_delta": "perplexity delta", "tpot_ms": "TPOT (ms)"}.get(col, col))
        ax.grid(True, axis="y", alpha=0.3)
        if col not in ("ppl_delta", "tpot_ms"):  # accuracies
            ax.set_ylim(0.0, 1.05)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize="small")
    _title(fig, title, rows)
    return fig
