"""Loading an experiment's results for a figure: the latest row per run, the runs of one setup, labels.

A sweep's rows accumulate: a failed run retried, an interrupted sweep finished, `+rerun=true`, the same
experiment on the tiny CPU model and on the GPU machine. Figures want one row per run id (the latest)
of one model on one device, so these helpers make that choice explicit and say what they chose.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from moelab.results.store import read_runs

SETUP_COLS = ("model", "layers", "expert_mib", "device_name")  # one figure = one model (shape) on one device


def results_dir(default: str = "results") -> Path:
    """$MOELAB_RESULTS, else ./results, else ../results (a notebook runs in notebooks/)."""
    env = os.environ.get("MOELAB_RESULTS")
    if env:
        return Path(env)
    here = Path.cwd() / default
    parent = Path.cwd().parent / default
    return parent if not here.exists() and parent.exists() else here


def latest_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last recorded row of each run id in each experiment (a rerun or a retry supersedes what came before;
    one config run in two experiments has one id but two rows)."""
    if df.empty or "run_id" not in df:
        return df
    keys = ["experiment", "run_id"] if "experiment" in df else ["run_id"]
    return df.drop_duplicates(keys, keep="last").reset_index(drop=True)


def load_runs(results: str | Path, experiment: str, ok_only: bool = True) -> pd.DataFrame:
    """The latest row of every run of `experiment`, only those that finished `ok` unless told otherwise."""
    df = latest_rows(read_runs(results, experiment))
    if ok_only and not df.empty:
        df = df[df["status"] == "ok"].reset_index(drop=True)
    if df.empty:
        raise FileNotFoundError(f"no {'finished ' if ok_only else ''}runs of experiment {experiment!r} under "
                                f"{results}: run `python run.py -m +experiment={experiment}` first")
    return df


def describe_setup(row: pd.Series | dict[str, Any]) -> str:
    """`tiny-mixtral (4 layers, 16 experts of 1.5 MiB, top-2) on cpu (...)`: what a figure was measured on."""
    mib = _num(row.get("expert_mib"))
    size = f" of {mib:.3g} MiB" if mib is not None else ""
    return (f"{row.get('model')} ({row.get('layers')} layers, {row.get('experts')} experts{size}, "
            f"top-{row.get('top_k')}) on {row.get('device_name')}")


def select_setup(df: pd.DataFrame, model: str | None = None) -> tuple[pd.DataFrame, str]:
    """The runs of one model on one device: `model` (or $MOELAB_MODEL) if given, else the most recent setup.

    Returns the rows and a one-line description; other setups present are named in it.
    """
    model = model or os.environ.get("MOELAB_MODEL") or None
    cols = [c for c in SETUP_COLS if c in df]
    keyed = df.assign(_setup=df[cols].astype(str).agg(" | ".join, axis=1))
    if model is not None:
        keyed = keyed[keyed["model"] == model]
        if keyed.empty:
            raise ValueError(f"no runs of model {model!r}; models present: {', '.join(map(str, df['model'].unique()))}")
    newest = keyed.sort_values("started_at").iloc[-1]["_setup"] if "started_at" in keyed else keyed.iloc[-1]["_setup"]
    chosen = keyed[keyed["_setup"] == newest].drop(columns="_setup").reset_index(drop=True)
    others = sorted(set(keyed["_setup"]) - {newest})
    about = describe_setup(chosen.iloc[0])
    if others:
        about += f" (also present: {'; '.join(others)}; choose with MOELAB_MODEL)"
    return chosen, about


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def run_label(row: pd.Series | dict[str, Any]) -> str:
    """A run's name in a legend: its `label` if the experiment set one, else its policy (+ lookahead distance)."""
    label = row.get("cfg.label")
    if isinstance(label, str) and label:
        return label
    policy = str(row.get("policy") or row.get("prefetch") or "run")
    distance = _num(row.get("cfg.prefetch.distance"))
    predicts = str(row.get("prefetch") or policy) in ("qhs", "mlp") and "prefetch.distance=" not in policy
    return f"{policy} d={int(distance)}" if distance is not None and predicts else policy


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `label` column (see `run_label`)."""
    return df.assign(label=[run_label(r) for _, r in df.iterrows()])


def read_steps(results: str | Path, experiment: str, run_id: str) -> pd.DataFrame:
    """A run's per-step table (results/<experiment>/<run_id>/steps.parquet)."""
    path = Path(results) / experiment / run_id / "steps.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no step table for run {run_id}: {path}")
    return pd.read_parquet(path)
