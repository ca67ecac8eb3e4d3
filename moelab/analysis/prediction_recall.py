"""`python -m moelab.analysis.prediction_recall [run overrides...] [predictors.mlp_path=DIR] [predictors.only=[..]]`

Runs the same model, workload and budget once per prefetch predictor (ar_binary, qhs d=1, qhs d=2, oracle,
and mlp when trained predictors are given), then writes the per-layer top-k recall table
(`<results_dir>/<experiment_name>/prediction_recall.csv` and `.md`) and figure
(`<results_dir>/figures/prediction_recall.png` and `.pdf`). Each run is recorded in runs.parquet as usual.

Not a `hydra.main` app: each predictor needs its own composition (its `policy=` changes the defaults
list), so the command line is parsed here and composed once per predictor with `hydra.compose`, the
user's overrides applying to every one of them. Exit code 2 on bad input (before any weights are read)
or when every predictor failed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

CONF = str(Path(__file__).resolve().parents[2] / "conf")
CONFIG_NAME = "prediction_recall"
MIB = 2**20
SUMMARY_COLS = ["prediction_topk_recall", "prediction_precision", "hit_rate", "h2d_bytes_demand",
                "h2d_bytes_prefetch", "tpot_ms"]
_KEY = re.compile(r"^[~+]*([\w./@-]+?)\s*=")  # the key of `key=value`, `+key=value`, `++key=value`


def _key(override: str) -> str:
    m = _KEY.match(override)
    return m.group(1) if m else override.lstrip("~+")


def split_overrides(args: Sequence[str]) -> list[str]:
    """Normalise the command line: `+predictors.x=` means `predictors.x=` (the key exists in the config),
    and the predictor's own groups cannot be chosen by the user (each predictor sets them)."""
    from moelab.core.errors import ConfigError

    out = []
    for a in args:
        key = _key(a)
        if key in ("policy", "prefetch"):
            raise ConfigError(f"{a!r}: each predictor sets policy= and prefetch=; choose predictors with "
                              f"predictors.only=[...] (and predictors.mlp_path=DIR for mlp)")
        out.append(a.lstrip("+") if key.startswith("predictors.") and not a.startswith("++") else a)
    return out


def compose_runs(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, tuple[list[str], dict[str, Any]]]]:
    """The base config and, per selected predictor, its overrides and resolved run config (all composed
    before any run, so a bad override fails at once)."""
    import hydra
    from omegaconf import OmegaConf

    from moelab.analysis.recall import predictors
    from moelab.core.errors import ConfigError

    with hydra.initialize_config_dir(config_dir=CONF, version_base=None):
        base = OmegaConf.to_container(hydra.compose(config_name=CONFIG_NAME, overrides=list(overrides)), resolve=True)
        settings = dict(base.pop("predictors") or {})
        available = predictors(settings.get("mlp_path"))
        only = settings.get("only")
        if isinstance(only, str):
            only = [only]
        wanted = list(available) if only is None else [str(x) for x in only]
        unknown = [w for w in wanted if w not in available]
        if unknown:
            hint = " (mlp needs predictors.mlp_path=DIR)" if "mlp" in unknown else ""
            raise ConfigError(f"unknown predictors.only {unknown}{hint}; allowed: {', '.join(available)}")
        if not wanted:
            raise ConfigError("predictors.only is empty: nothing to run")
        configs = {}
        for label in wanted:
            cfg = hydra.compose(config_name=CONFIG_NAME, overrides=[*overrides, *available[label]])
            c = OmegaConf.to_container(cfg, resolve=True)
            c.pop("predictors", None)
            configs[label] = (available[label], c)
    return base, configs


def summary_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Per predictor: recall next to what it cost and bought (precision, hits, bytes in MiB, TPOT)."""
    df = pd.DataFrame([{"predictor": label, **{k: row.get(k, float("nan")) for k in SUMMARY_COLS}}
                       for label, row in rows]).set_index("predictor")
    df = df.astype(float)
    for col in ("h2d_bytes_demand", "h2d_bytes_prefetch"):
        df[col] = df[col] / MIB
    return df.rename(columns={"prediction_topk_recall": "topk_recall", "prediction_precision": "precision",
                              "h2d_bytes_demand": "demand_MiB", "h2d_bytes_prefetch": "prefetch_MiB"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run every predictor, continuing past failures; write the table and figure; print both tables."""
    from hydra.errors import HydraException

    from moelab.analysis.recall import markdown, plot_recall_by_layer, recall_by_layer
    from moelab.core.errors import MoelabError
    from moelab.runner import run

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:
        base, configs = compose_runs(split_overrides(args))
    except (MoelabError, HydraException) as e:
        print(f"error: {str(e).split('Config search path:')[0].strip()}", file=sys.stderr)
        return 2

    done: list[tuple[str, dict[str, Any]]] = []
    failed: list[tuple[str, str]] = []
    for label, (predictor_overrides, c) in configs.items():
        print(f"predictor {label}: {' '.join(predictor_overrides)}", flush=True)
        try:
            done.append((label, run(c)))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # recorded by the runner as status=failed; the other predictors go on
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            failed.append((label, msg))
            print(f"predictor {label} failed: {msg}", file=sys.stderr, flush=True)
    if not done:
        print("error: every predictor failed", file=sys.stderr)
        return 2

    rows = pd.DataFrame([{"predictor": label, **row} for label, row in done])
    table = recall_by_layer(rows, label_col="predictor")
    summary = summary_table(done)
    out_dir = Path(str(base.get("results_dir", "results")))
    exp_dir = out_dir / str(base.get("experiment_name", CONFIG_NAME))
    exp_dir.mkdir(parents=True, exist_ok=True)
    csv = exp_dir / "prediction_recall.csv"
    table.to_csv(csv)
    first = done[0][1]
    about = (f"{first.get('model')} ({first.get('layers')} layers, {first.get('experts')} experts, "
             f"top-{first.get('top_k')}), {first.get('budget_experts')} GPU expert slots, "
             f"{first.get('prompts')} prompts x {first.get('new_tokens')} new tokens")
    md = [f"# Top-k prediction recall per layer\n\n{about}. Run ids: "
          + ", ".join(f"{label} `{row.get('run_id')}`" for label, row in done) + ".\n\n", markdown(table),
          "\n## Per predictor\n\n", markdown(summary)]
    if failed:
        md.append("\nFailed: " + "; ".join(f"{label}: {msg}" for label, msg in failed) + "\n")
    (exp_dir / "prediction_recall.md").write_text("".join(md))
    figs = plot_recall_by_layer(table, out_dir / "figures" / "prediction_recall",
                                title=f"Top-k recall per layer: {first.get('model')}")

    print(f"\n{about}")
    print(f"written: {csv}, {exp_dir / 'prediction_recall.md'}, {', '.join(str(p) for p in figs)}")
    if failed:
        print("failed: " + "; ".join(f"{label} ({msg})" for label, msg in failed))
    print("\nper predictor (MiB copied during decode, TPOT in ms):")
    print(summary.round(3).to_string(na_rep="-"))
    print("\ntop-k prediction recall per layer:")
    print(table.round(3).to_string(na_rep="-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
