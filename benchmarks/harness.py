"""What the benchmark scripts share: runs through moelab.runner.run from Hydra overrides, one row each, written
as they finish (a cut-off benchmark keeps what it measured), and the tiny-model overrides of --quick."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# shrink a full-size preset to a few-MB model (CPU smoke tests of the benchmark code)
# (`++`: a preset's own overrides are empty; its sizes are under model.shapes, which these override)
QUICK_SHAPES = ["++model.config.hidden_size=128", "++model.config.intermediate_size=256",
                "++model.config.vocab_size=512", "++model.config.moe_intermediate_size=64",
                "++model.config.num_attention_heads=4", "++model.config.num_key_value_heads=2", "model.dtype=float32",
                "model.num_layers=3"]


# the committed reference models and their routing traces (checkpoints/v1/README.md): every benchmark's default
V1 = ROOT / "checkpoints" / "v1"
TARGET = V1 / "code_moe"
DRAFT = V1 / "code_draft"
TRACES = V1 / "traces"
TRACE_KINDS = ("ar", "g2", "g4", "g8")  # autoregressive (with qhs predictions); speculative at gamma 2, 4, 8


def trace_file(folder: str | Path, target: str | Path, kind: str) -> Path:
    """`<folder>/<target name>_<kind>.parquet`, the committed traces' naming (code_moe_ar.parquet, ...)."""
    return Path(folder) / f"{Path(target).name}_{kind}.parquet"


def reference_args(ap: Any, traces: bool = True) -> None:
    """--ckpt / --draft (and --traces): default to the committed v1 reference models and traces."""
    ap.add_argument("--ckpt", default=str(TARGET), help="target MoE checkpoint (default: the committed code_moe; "
                    "checkpoints/v1/code_moe_fine is the fine-grained one)")
    ap.add_argument("--draft", default=str(DRAFT), help="draft checkpoint for speculative decoding")
    if traces:
        ap.add_argument("--traces", default=str(TRACES),
                        help="folder with <target>_{ar,g2,g4,g8}.parquet (default: the committed traces)")


def target_overrides(ckpt: str | Path) -> list[str]:
    """A committed (or any local HF) target through the code_moe preset; its classes pick the adapter."""
    return ["model=code_moe", f"model.path={ckpt}", f"model.name={Path(ckpt).name.replace('_', '-')}"]


def common_args(ap: Any) -> Any:
    """The arguments every benchmark takes; returns the parsed args with `device` resolved and `out` created."""
    import torch

    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="tiny random models (CPU smoke test)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    args.device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    return args


def quick_shapes(preset: str) -> list[str]:
    return QUICK_SHAPES + (["++model.config.head_dim=32"] if preset == "qwen3_moe" else [])


class Bench:
    """Runs labelled configurations and keeps their rows (metrics in MiB where they are bytes)."""

    def __init__(self, out: Path, device: str, experiment: str, metrics: list[str]):
        from hydra import compose, initialize_config_dir

        self.out, self.device, self.experiment, self.metrics = out, device, experiment, metrics
        self._ctx = initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None)
        self._ctx.__enter__()
        self.compose = compose
        self.rows: list[dict[str, Any]] = []

    def compose_config(self, overrides: list[str], budget: float) -> Any:
        return self.compose("config", overrides=[
            *overrides, f"budget.fraction={budget}", f"experiment_name={self.experiment}", f"results_dir={self.out}",
            "progress=false", "logger.console=false", f"device={self.device}"])

    def config(self, overrides: list[str], budget: float) -> dict[str, Any]:
        """The run configuration (resolved, plain dict) that `run` would use for these overrides."""
        return OmegaConf.to_container(self.compose_config(overrides, budget), resolve=True)

    def run(self, section: str, label: str, budget: float, overrides: list[str], **edits: Any) -> dict[str, Any]:
        from moelab.runner import run

        cfg = self.compose_config(overrides, budget)
        for key, value in edits.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        t0 = time.time()
        try:
            r = run(cfg)
        except Exception as e:  # a failing configuration is a row, not the end of the benchmark
            r = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        row = {"section": section, "model": r.get("model"), "budget": budget, "policy": label,
               **{k: r.get(k) for k in self.metrics if k in r}, "status": r.get("status"), "error": r.get("error"),
               **{f"h2d_mib_{c}": (r.get(f"h2d_bytes_{c}") or 0) / 2**20 for c in ("demand", "prefetch", "wasted")},
               "prediction_recall_layers": r.get("prediction_recall_layers"), "trace_path": r.get("trace_path"),
               "wall_s": round(time.time() - t0, 1)}
        print(json.dumps({k: v for k, v in row.items() if k != "prediction_recall_layers"}, default=str), flush=True)
        self.rows.append(row)
        pd.DataFrame(self.rows).to_csv(self.out / f"{self.experiment}_all.csv", index=False)  # kept if cut off
        return r


def vs_baseline(rows: list[dict[str, Any]], baseline: str, keys: tuple[str, ...] = ("section", "model", "budget"),
                col: str = "tpot_ms") -> pd.DataFrame:
    """The ok rows, with `vs_<baseline>` = col / the baseline row's col in the same (section, model, budget)."""
    df = pd.DataFrame(rows)
    if df.empty or "status" not in df or col not in df:
        return pd.DataFrame(columns=[*keys, "policy", f"vs_{baseline}"])
    ok = df[df.status == "ok"].copy()
    base = ok[ok.policy == baseline].drop_duplicates(list(keys)).set_index(list(keys))[col]
    ok[f"vs_{baseline}"] = [base.get(tuple(k), float("nan")) for k in zip(*(ok[c] for c in keys))]
    ok[f"vs_{baseline}"] = ok[col] / ok[f"vs_{baseline}"]
    return ok


def print_tables(df: pd.DataFrame, keys: list[str], metrics: list[str]) -> None:
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    cols = [c for c in keys + metrics if c in df]
    for section, part in df.groupby("section", sort=False):
        print(f"\n== {section}")
        print(part[cols].drop(columns="section").to_string(index=False, float_format="%.4g"))
