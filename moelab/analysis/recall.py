"""Per-layer top-k prediction recall of prefetch predictors: the table and the figure the Speculating
Experts paper reports, built from results rows (`prediction_recall_layers`, see docs/METRICS.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

# label -> Hydra overrides of the run config; `predictors(mlp_path)` adds the learned predictor
PREDICTORS: dict[str, list[str]] = {
    "ar_binary": ["policy=ar_binary"],
    "qhs d=1": ["policy=qhs"],
    "qhs d=2": ["policy=qhs", "prefetch.distance=2"],
    "oracle": ["policy=oracle"],
}


def predictors(mlp_path: str | Path | None = None) -> dict[str, list[str]]:
    """The default predictor set, plus "mlp" when trained predictors exist (it cannot run without them)."""
    out = {label: list(ov) for label, ov in PREDICTORS.items()}
    if mlp_path is not None:
        out["mlp"] = ["policy=mlp", f"prefetch.path={mlp_path}"]
    return out


def _layers(value: Any) -> dict[int, float]:
    """A row's `prediction_recall_layers` JSON as {layer: recall}; failed or predictor-less runs give {}."""
    if not isinstance(value, str) or not value:
        return {}
    return {int(k): float(v) for k, v in json.loads(value).items()}


def recall_by_layer(rows: pd.DataFrame, label_col: str = "predictor") -> pd.DataFrame:
    """One row per label (first-seen order), one int column per decoder layer (sorted), plus `mean`.

    Layers a predictor never predicts (qhs has no prediction for the first MoE layers) are NaN, so the
    figure leaves them out rather than drawing a false zero. Several rows with one label (repeats) are
    averaged per layer; `mean` is the mean over the label's layers, as `prediction_topk_recall` is.
    """
    records = [{"label": label, "layer": layer, "recall": r}
               for label, js in zip(rows[label_col], rows["prediction_recall_layers"])
               for layer, r in _layers(js).items()]
    labels = list(dict.fromkeys(rows[label_col]))
    long = pd.DataFrame(records, columns=["label", "layer", "recall"])
    table = long.pivot_table(index="label", columns="layer", values="recall", aggfunc="mean")
    table = table.reindex(index=labels, columns=sorted(int(c) for c in table.columns))
    table.columns = [int(c) for c in table.columns]
    table["mean"] = table.mean(axis=1)
    table.index.name = label_col
    return table.astype(float)


def plot_recall_by_layer(table: pd.DataFrame, path_stem: str | Path, title: str | None = None) -> list[Path]:
    """Line plot of `recall_by_layer`'s table (x: layer, y: top-k recall); writes `<stem>.png` and `<stem>.pdf`.

    Uses a bare Agg figure (no pyplot), so it neither needs a display nor changes the caller's backend.
    """
    from matplotlib.ticker import MaxNLocator

    from moelab.analysis.figures import new_figure, save

    layers = [c for c in table.columns if c != "mean"]
    fig = new_figure(7.2, 4.0)
    ax = fig.add_subplot()
    for label, values in table[layers].iterrows():
        ax.plot(layers, values.to_numpy(dtype=float), marker="o", label=str(label))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("top-k recall")
    ax.set_ylim(0.0, 1.05)
    if len(layers) <= 16:
        ax.set_xticks(layers)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Expert prediction: top-k recall per layer")
    fig.legend(loc="outside right upper", fontsize="small")
    return save(fig, path_stem)


def markdown(table: pd.DataFrame, digits: int = 3, na: str = "-") -> str:
    """A GitHub markdown table (index as the first column) without pandas' optional `tabulate` dependency."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return na if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    head: Sequence[Any] = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "---|" * len(head)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in [idx, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"
