"""MoE-SpAc's signal comparison from results rows (`signal_*`, docs/METRICS.md): how well the binary signal, the
frequency map's top experts and the whole map name the next verification pass's experts, per model, gamma and
layer; the table and the figure `notebooks/spac_signals.py` draws."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SIGNALS = {"binary": "binary (first token)", "freq_at_k": "frequency map, top k", "freq": "frequency map, all"}


def signal_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, gamma): acceptance and each signal's recall and precision (means over layers)."""
    cols = {"acceptance_rate": "acceptance"}
    for s in SIGNALS:
        cols[f"signal_{s}_recall"] = f"{s}_recall"
        cols[f"signal_{s}_precision"] = f"{s}_precision"
    df = rows.assign(gamma=rows["cfg.decoding.gamma"].astype(int))
    table = df.groupby(["model", "gamma"], sort=False)[list(cols)].mean().rename(columns=cols)
    return table.sort_index().astype(float)


def signal_by_layer(rows: pd.DataFrame, metric: str = "recall") -> pd.DataFrame:
    """Long table (model, gamma, signal, layer, value) of the per-layer `signal_layers` JSON."""
    records = []
    for _, r in rows.iterrows():
        per = json.loads(r["signal_layers"]) if isinstance(r["signal_layers"], str) and r["signal_layers"] else {}
        for s in SIGNALS:
            for layer, v in per.get(f"{s}_{metric}", {}).items():
                records.append({"model": r["model"], "gamma": int(r["cfg.decoding.gamma"]), "signal": s,
                                "layer": int(layer), "value": float(v)})
    return pd.DataFrame(records, columns=["model", "gamma", "signal", "layer", "value"])


def plot_signals(rows: pd.DataFrame, path_stem: str | Path, title: str, gamma: int = 4) -> list[Path]:
    """Per model (columns): recall per layer of each signal at `gamma` (top), mean recall vs gamma (bottom)."""
    from moelab.analysis.figures import new_figure, save

    layers = signal_by_layer(rows)
    table = signal_table(rows)
    models = list(dict.fromkeys(rows["model"]))
    gammas = sorted(layers["gamma"].unique())
    shown = gamma if gamma in gammas else gammas[len(gammas) // 2]
    fig = new_figure(1.5 + 4.2 * len(models), 6.4)
    axes = fig.subplots(2, len(models), sharey=True, squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        part = layers[(layers.model == model) & (layers.gamma == shown)]
        for s, name in SIGNALS.items():
            line = part[part.signal == s].groupby("layer")["value"].mean()
            top.plot(line.index, line.to_numpy(), marker="o", label=name)
            means = table.loc[model][f"{s}_recall"]
            bottom.plot(means.index, means.to_numpy(), marker="o")
        top.set_title(f"{model}, gamma {shown}", fontsize="medium")
        top.set_xlabel("decoder layer")
        top.set_xticks(sorted(part["layer"].unique()))
        bottom.set_xlabel("gamma (draft tokens per verification)")
        bottom.set_xticks(gammas)
        for ax in (top, bottom):
            ax.set_ylim(0.0, 1.05)
            ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("recall of the next pass's experts")
    axes[1][0].set_ylabel("mean over layers")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(SIGNALS), fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return save(fig, path_stem)
