"""The identifying part of a results row: config, versions, commit, device, stable run id."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

import moelab

# Keys that name where results go or how they are shown; they do not change what a run measures.
# (`label` is a run's display name in figures, set by experiment variants.)
NON_IDENTIFYING = ("experiment_name", "experiment", "results_dir", "logger", "progress", "rerun", "hydra", "label")


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def run_id(cfg: Mapping[str, Any]) -> str:
    """Stable id of a run from its resolved config (same config, same id)."""
    ident = {k: v for k, v in cfg.items() if k not in NON_IDENTIFYING}
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def git_commit() -> str:
    """The checkout's commit (`-dirty` with uncommitted changes); MOELAB_COMMIT overrides it where the tree's git
    history is not the truth (a copy of the working tree sent to a GPU machine)."""
    if os.environ.get("MOELAB_COMMIT"):
        return os.environ["MOELAB_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_index(device: torch.device) -> int | None:
    """The CUDA device's index (cuda:N; a bare `cuda` is the current device); None on a CPU, which has none."""
    if device.type == "cuda":
        return int(device.index) if device.index is not None else int(torch.cuda.current_device())
    return None


def base_row(cfg: Mapping[str, Any], experiment: str) -> dict[str, Any]:
    return {
        "run_id": run_id(cfg),
        "experiment": experiment,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "error": "",
        "moelab_version": moelab.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "git_commit": git_commit(),
        **{f"cfg.{k}": v for k, v in flatten(cfg).items()},
    }
