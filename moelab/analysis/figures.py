"""The standard figures: results rows (pandas) in, a matplotlib Figure out; `save` writes PNG + PDF.

One function per figure of the papers, each with a table function beside it (the numbers the figure
shows, so a notebook can print them too). Figures are bare Agg figures (no pyplot): they need no
display and leave the caller's backend alone; Jupyter shows a returned Figure as an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from moelab.analysis.load import with_labels

MIB = 2**20
CPU_NOTE = "CPU timings exercise the code; only GPU timings are results"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf` (folders created); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ext) for ext in (".png", ".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150)
    return paths


def _title(fig: Figure, title: str, rows: pd.DataFrame) -> None:
    on_cpu = "device" in rows and (rows["device"] == "cpu").all()
    fig.suptitle(title + (f"\n({CPU_NOTE})" if on_cpu else ""), fontsize="medium")


def _order(labels: Sequence[str], first: Sequence[str] = ()) -> list[str]:
    """Labels in a stable order: known ones first (as given), the rest as they came."""
    seen = list(dict.fromkeys(labels))
    return [x for x in first if x in seen] + [x for x in seen if x not in first]


POLICY_ORDER = ("on_demand", "ar_binary", "qhs", "qhs d=1", "qhs d=2", "mlp", "spac", "oracle")


# --- hit rate and TPOT vs budget, per prefetch policy -------------------------------------------------------------

def budget_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy label, budget): hit rate, TPOT, bytes copied per decoded token (MiB), overlap."""
    df = with_labels(rows)
    decoded = df["decode_tokens"].astype(float).replace(0, np.nan) if "decode_tokens" in df else np.nan
    table = pd.DataFrame({
        "label": df["label"], "budget_fraction": df["budget_fraction"].astype(float),
        "budget_experts": df["budget_experts"], "hit_rate": df["hit_rate"].astype(float),
        "tpot_ms": df["tpot_ms"].astype(float),
        "h2d_mib_per_token": (df["h2d_bytes_demand"].astype(float) + df["h2d_bytes_prefetch"].astype(float))
        / MIB / decoded,
        "overlap": df["overlap"].astype(float),
        "ref_tpot_ms": df.get("ref_tpot_median_ms", pd.Series(np.nan, index=df.index)).astype(float),
    })
    table = table.groupby(["label", "budget_fraction"], sort=False).mean(numeric_only=True).reset_index()
    order = {k: i for i, k in enumerate(_order(table["label"], POLICY_ORDER))}
    return table.sort_values(["label", "budget_fraction"], key=lambda s: s.map(order) if s.name == "label" else s,
                             ignore_index=True)


def plot_budget_sweep(rows: pd.DataFrame, title: str = "Hit rate and TPOT vs GPU expert budget") -> Figure:
    """Three panels over the budget (share of experts on the GPU): hit rate, TPOT (the un-offloaded model's
    TPOT dashed), MiB copied per decoded token; one line per prefetch policy."""
    table = budget_table(rows)
    fig = new_figure(11.0, 3.8)
    axes = fig.subplots(1, 3)
    panels = [("hit_rate", "expert hit rate"), ("tpot_ms", "TPOT (ms)"), ("h2d_mib_per_token", "H2D MiB / token")]
    for ax, (col, ylabel) in zip(axes, panels):
        for label, part in table.groupby("label", sort=False):
            ax.plot(part["budget_fraction"], part[col], marker="o", label=str(label))
        ax.set_xlabel("GPU expert budget (share of experts)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ref = table["ref_tpot_ms"].dropna()
    if len(ref):
        axes[1].axhline(float(ref.median()), color="grey", linestyle="--", label="un-offloaded")
    axes[0].set_ylim(0.0, 1.05)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    _title(fig, title, rows)
    return fig


# --- speculative execution: accuracy vs speed ---------------------------------------------------------------------

def spec_exec_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, lookahead distance, speculative execution): accuracy, changed choices, speed,
    bytes."""
    df = rows
    decoded = df["decode_tokens"].astype(float).replace(0, np.nan)
    table = pd.DataFrame({
        "workload": df["workload"].astype(str) if "workload" in df else "builtin",
        "distance": df["cfg.prefetch.distance"].astype(int),
        "speculative_execution": df["speculative_execution"].astype(bool),
        "token_agreement": df["token_agreement"].astype(float),
        "ppl_delta": df["ppl_delta"].astype(float),
        "spec_exec_changed": df.get("spec_exec_changed", pd.Series(np.nan, index=df.index)).astype(float),
        "tpot_ms": df["tpot_ms"].astype(float),
        "hit_rate": df["hit_rate"].astype(float),
        "demand_mib_per_token": df["h2d_bytes_demand"].astype(float) / MIB / decoded,
    })
    keys = ["workload", "distance", "speculative_execution"]
    return table.groupby(keys).mean().reset_index().sort_values(keys, ignore_index=True)


def plot_spec_exec(rows: pd.DataFrame, title: str = "Speculative execution: accuracy vs speed (qhs)") -> Figure:
    """Grouped bars per lookahead distance (and workload, when there are several), speculative execution off
    vs on: token agreement, perplexity delta, TPOT, demand-fetched MiB per token."""
    table = spec_exec_table(rows)
    several = table["workload"].nunique() > 1
    table["group"] = [f"{w}\nd={d}" if several else f"d={d}" for w, d in zip(table["workload"], table["distance"])]
    fig = new_figure(12.0, 3.6)
    axes = fig.subplots(1, 4)
    panels = [("token_agreement", "token agreement"), ("ppl_delta", "perplexity delta"), ("tpot_ms", "TPOT (ms)"),
              ("demand_mib_per_token", "demand MiB / token")]
    groups = list(dict.fromkeys(table["group"]))
    x = np.arange(len(groups))
    width = 0.38
    for ax, (col, ylabel) in zip(axes, panels):
        for i, on in enumerate((False, True)):
            part = table[table["speculative_execution"] == on].set_index("group").reindex(groups)
            ax.bar(x + (i - 0.5) * width, part[col].to_numpy(dtype=float), width,
                   label="speculative execution" if on else "fetch the router's choice")
        ax.set_xticks(x, groups, fontsize="small" if several else None)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(0.0, 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    _title(fig, title, rows)
    return fig


# --- SpAc ablations -----------------------------------------------------------------------------------------------

SPAC_COLS = {"tokens_per_s": "tokens / s", "hit_rate": "expert hit rate", "cpu_share": "CPU-computed share",
             "acceptance_rate": "draft acceptance"}


def spac_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (label): tokens/s, hit rate, CPU share, draft acceptance, bytes per token."""
    df = with_labels(rows)
    if "workload" in df and df["workload"].nunique() > 1:  # the workload axis: one bar per variant and workload
        df = df.assign(label=df["label"] + " · " + df["workload"].astype(str))
    out = pd.DataFrame({"label": df["label"]})
    for col in SPAC_COLS:
        out[col] = df[col].astype(float) if col in df else np.nan
    decoded = df["decode_tokens"].astype(float).replace(0, np.nan)
    out["h2d_mib_per_token"] = (df["h2d_bytes_demand"].astype(float) + df["h2d_bytes_prefetch"].astype(float)) \
        / MIB / decoded
    return out.groupby("label", sort=False).mean().reset_index()


def plot_spac_ablation(rows: pd.DataFrame, title: str = "MoE-SpAc ablations") -> Figure:
    """Horizontal bars per variant: tokens/s (the headline), hit rate, CPU share, draft acceptance."""
    table = spac_table(rows)
    fig = new_figure(12.0, 0.5 * len(table) + 1.8)
    axes = fig.subplots(1, len(SPAC_COLS), sharey=True)
    y = np.arange(len(table))
    for ax, (col, xlabel) in zip(axes, SPAC_COLS.items()):
        ax.barh(y, table[col].to_numpy(dtype=float), color="tab:blue" if col == "tokens_per_s" else "tab:grey")
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.3)
        if col != "tokens_per_s":  # shares
            ax.set_xlim(0.0, 1.05)
    axes[0].set_yticks(y, table["label"].tolist())
    axes[0].invert_yaxis()
    _title(fig, title, rows)
    return fig


# --- copy/compute timeline of decode steps ------------------------------------------------------------------------

TIMELINE_COLS = ("compute_ms", "stall_ms", "host_gap_ms", "copy_ms", "overlap_ms")


def timeline_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Decode steps only: compute, stall, host gap, copy time hidden under compute and exposed (ms)."""
    dec = steps[steps["phase"] == "decode"].reset_index(drop=True)
    out = dec[["step", *TIMELINE_COLS]].astype(float).copy()
    out["copy_hidden_ms"] = out["overlap_ms"]
    out["copy_exposed_ms"] = (out["copy_ms"] - out["overlap_ms"]).clip(lower=0.0)
    out["step"] = out["step"].astype(int)
    return out


def median_step(table: pd.DataFrame) -> pd.Series:
    """The decode step of median GPU time (compute + stall + host gap): the one the lanes panel draws."""
    total = table["compute_ms"] + table["stall_ms"] + table["host_gap_ms"]
    return table.iloc[int(np.argsort(total.to_numpy())[len(total) // 2])]


def plot_decode_timeline(steps_by_label: Mapping[str, pd.DataFrame], title: str = "Where a decode step's time goes",
                         rows: pd.DataFrame | None = None) -> Figure:
    """Per run (label): left, the median decode step as two lanes (compute stream: compute, stall, host
    gap; copy stream: copies hidden under compute, exposed copies); right, every decode step as stacked bars.

    The per-step table has totals per step, not each copy's start and end, so the lanes show how much of
    each kind of time a step had (aggregated, left to right), not the order in which it happened.
    """
    n = len(steps_by_label)
    fig = new_figure(12.0, 2.6 * n + 0.8)
    axes = np.atleast_2d(fig.subplots(n, 2, gridspec_kw={"width_ratios": [1, 2]}, squeeze=False))
    colors = {"compute_ms": "tab:blue", "stall_ms": "tab:red", "host_gap_ms": "tab:olive",
              "copy_hidden_ms": "tab:green", "copy_exposed_ms": "tab:orange"}
    names = {"compute_ms": "compute", "stall_ms": "stall (waiting for a copy)", "host_gap_ms": "host gap",
             "copy_hidden_ms": "copy, under compute", "copy_exposed_ms": "copy, exposed"}
    for (label, steps), (lanes, bars) in zip(steps_by_label.items(), axes):
        table = timeline_table(steps)
        if table.empty:
            lanes.set_title(f"{label}: no decode steps")
            continue
        med = median_step(table)
        for lane, parts in ((1, ("compute_ms", "stall_ms", "host_gap_ms")), (0, ("copy_hidden_ms", "copy_exposed_ms"))):
            left = 0.0
            for col in parts:
                width = float(med[col])
                lanes.barh(lane, width, left=left, color=colors[col], label=names[col])
                left += width
        lanes.set_yticks([0, 1], ["copy stream", "compute stream"])
        lanes.set_xlabel("ms")
        lanes.set_title(f"{label}: median decode step (step {int(med['step'])})", fontsize="small")
        x = np.arange(len(table))
        bottom = np.zeros(len(table))
        for col in ("compute_ms", "stall_ms", "host_gap_ms"):
            vals = table[col].to_numpy(dtype=float)
            bars.bar(x - 0.2, vals, 0.4, bottom=bottom, color=colors[col])
            bottom += vals
        bars.bar(x + 0.2, table["copy_hidden_ms"], 0.4, color=colors["copy_hidden_ms"])
        bars.bar(x + 0.2, table["copy_exposed_ms"], 0.4, bottom=table["copy_hidden_ms"],
                 color=colors["copy_exposed_ms"])
        bars.set_xlabel("decode step (left bar: compute stream, right bar: copy stream)")
        bars.set_ylabel("ms")
        bars.set_xticks(x[:: max(1, len(x) // 16)], table["step"].iloc[:: max(1, len(x) // 16)].tolist())
        bars.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=5, fontsize="small")
    _title(fig, title, rows if rows is not None else pd.DataFrame())
    return fig


# --- moelab against the systems users know, and the floor (+experiment=peers) ------------------------------------

PEERS_ORDER = ("hf_accelerate", "on_demand", "ar_binary", "gate_prefetch", "fiddler", "spec_experts", "spac", "oracle")
PEERS_COLS = ["model", "budget", "policy", "tokens_per_s", "tpot_ms", "vs_on_demand", "floor_ms_per_token",
              "efficiency", "transfer_floor_ms_per_token", "compute_floor_ms_per_token", "stall_share", "overlap",
              "host_gap_ms", "cpu_share", "hit_rate", "token_agreement", "floor_note"]


def peers_rows(runs: pd.DataFrame, accelerate: pd.DataFrame | None = None) -> pd.DataFrame:
    """The peers experiment's rows (system label as `policy`, budget fraction as `budget`) with the accelerate
    rows of `benchmarks/peers.py` added; an accelerate row takes the floor of the on-demand row of its model and
    budget (same routing, same budget) and its efficiency from it, per committed token (floor x tokens/s / 1000);
    NaN where that floor is (on a CPU there is none)."""
    df = with_labels(runs).assign(policy=lambda d: d["label"], budget=lambda d: d["budget_fraction"].astype(float))
    if accelerate is not None and len(accelerate):
        df = pd.concat([df, accelerate.assign(budget=accelerate["budget"].astype(float))], ignore_index=True)
    base = df[df["policy"] == "on_demand"].set_index(["model", "budget"])["floor_ms_per_token"]
    for i in df.index[df["policy"] == "hf_accelerate"]:
        floor = base.get((df.at[i, "model"], df.at[i, "budget"]))
        if floor is not None:
            df.at[i, "floor_ms_per_token"] = floor
            df.at[i, "efficiency"] = floor * float(df.at[i, "tokens_per_s"]) / 1e3
    return df


def relative_to(table: pd.DataFrame, baseline: str, col: str = "tpot_ms", keys: Sequence[str] = ("model", "budget"),
                label: str = "policy") -> pd.Series:
    """`col` of each row over `col` of the `baseline` row with the same keys (TPOT ratio < 1: faster)."""
    base = table[table[label] == baseline].drop_duplicates(list(keys)).set_index(list(keys))[col]
    ref = [base.get(k, np.nan) for k in table[list(keys)].itertuples(index=False, name=None)]
    return table[col].astype(float) / np.asarray(ref, dtype=float)


def peers_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, budget, system), systems in PEERS_ORDER: speed, TPOT against on-demand's, the floor,
    and where time goes."""
    rows = rows.assign(vs_on_demand=relative_to(rows, "on_demand"))
    df = rows[[c for c in PEERS_COLS if c in rows]].copy()
    df["order"] = [PEERS_ORDER.index(p) if p in PEERS_ORDER else len(PEERS_ORDER) for p in df["policy"]]
    return df.sort_values(["model", "budget", "order"]).drop(columns="order").reset_index(drop=True)


def plot_peers(rows: pd.DataFrame, title: str = "Decode tokens/s vs GPU expert budget") -> Figure:
    """Per model: tokens/s (log scale) vs budget, one line per system. Dashed: the autoregressive routing's
    transfer floor (Belady-optimal bytes over the copy engine's calibrated peak bandwidth), the physical limit of
    PCIe; dotted: the on-demand row's floor (the larger of that and the plain model's graph-captured step, which
    is no bound for systems that compute experts on the CPU). A floor that is NaN (every floor on a CPU, see the
    rows' `floor_note`) is not drawn."""
    table = peers_table(rows)
    models = list(dict.fromkeys(table["model"]))
    fig = new_figure(5.2 * len(models), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(models), squeeze=False)[0])
    for ax, model in zip(axes, models):
        part = table[table["model"] == model]
        for policy in _order(part["policy"].tolist(), PEERS_ORDER):
            line = part[part["policy"] == policy].sort_values("budget")
            ax.plot(line["budget"], line["tokens_per_s"], marker="o", label=policy)
        floor = part[part["policy"] == "on_demand"].sort_values("budget")
        for col, fmt, color, label in (("transfer_floor_ms_per_token", "--", "k", "transfer floor"),
                                       ("floor_ms_per_token", ":", "grey", "floor (on-demand row)")):
            ms = floor[col].astype(float) if col in floor else pd.Series(dtype=float)
            if ms.notna().any():  # NaN floors (a CPU, CPU experts) are not drawn
                ax.plot(floor["budget"], 1e3 / ms, fmt, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(part["budget"].unique()), [f"{b:.1%}" for b in sorted(part["budget"].unique())])
        ax.set_xlabel("GPU expert budget (share of all experts)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(model, fontsize="medium")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    _title(fig, title, rows)
    return fig
