"""Per-layer top-k prediction recall of prefetch predictors: the table and the figure the Speculating
Experts paper reports, built from results rows (`prediction_recall_layers`, see docs/METRICS.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

PREDICTOR_DIR = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "predictor"


def predictors(mlp_path: str | Path | None = None) -> dict[str, list[str]]:
    """The one list of predictors: label -> Hydra overrides, read from `conf/experiment/predictor/*.yaml` (the
    group `+experiment=prediction_recall` sweeps). "mlp" is included only with `mlp_path` (it cannot run
    without trained predictors)."""
    from omegaconf import OmegaConf

    out: dict[str, list[str]] = {}
    for path in sorted(PREDICTOR_DIR.glob("*.yaml"), key=_predictor_order):
        if path.stem == "mlp" and mlp_path is None:
            continue
        label = str(OmegaConf.load(path).get("label", path.stem))
        out[label] = [f"+experiment/predictor={path.stem}"]
    if mlp_path is not None:
        out["mlp"].append(f"prefetch.path={mlp_path}")
    return out


def predictor_labels() -> list[str]:
    """Every predictor's label (mlp included), in the figures' order."""
    return list(predictors(mlp_path="DIR"))


def _predictor_order(path: Path) -> tuple[int, str]:
    """ar_binary, qhs_*, mlp, oracle: weakest signal first, the upper bound last."""
    rank = {"ar_binary": 0, "mlp": 2, "oracle": 3}
    return rank.get(path.stem, 1), path.stem


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


def plot_recall_by_layer(tables: pd.DataFrame | Mapping[str, pd.DataFrame], path_stem: str | Path,
                         title: str | None = None) -> list[Path]:
    """Line plot of `recall_by_layer`'s table (x: layer, y: top-k recall), one panel per model when given
    {model: table}; writes `<stem>.png` and `<stem>.pdf`.

    Uses a bare Agg figure (no pyplot), so it neither needs a display nor changes the caller's backend.
    """
    from matplotlib.ticker import MaxNLocator

    from moelab.analysis.figures import new_figure, save

    panels = {"": tables} if isinstance(tables, pd.DataFrame) else dict(tables)
    fig = new_figure(3.0 + 4.2 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (name, table) in zip(axes, panels.items()):
        layers = [c for c in table.columns if c != "mean"]
        for label, values in table[layers].iterrows():
            ax.plot(layers, values.to_numpy(dtype=float), marker="o", label=str(label))
        ax.set_xlabel("decoder layer")
        ax.set_ylim(0.0, 1.05)
        if len(layers) <= 16:
            ax.set_xticks(layers)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if name:
            ax.set_title(name, fontsize="medium")
    axes[0].set_ylabel("top-k recall")
    fig.suptitle(title or "Expert prediction: top-k recall per layer", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
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
