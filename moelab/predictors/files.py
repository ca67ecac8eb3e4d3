"""Where trained predictors live on disk, readable without torch (policies read the config only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moelab.core.errors import ConfigError
from moelab.models.hub import REPO_ROOT

CONFIG = "predictor.json"
WEIGHTS = "predictor.safetensors"


def locate_predictors(path: str | Path) -> Path:
    """`path` as given; a relative one missing from the working directory is looked up in moelab's checkout, where
    the reference models' committed predictors live (`checkpoints/v1/predictors/...`)."""
    local = Path(path).expanduser()
    if not local.exists() and not local.is_absolute() and (REPO_ROOT / local).exists():
        return REPO_ROOT / local
    return local


def read_predictor_config(path: str | Path) -> dict[str, Any]:
    cfg = Path(path) / CONFIG
    if not cfg.is_file():
        raise ConfigError(f"no MLP predictors at {path} (expected {CONFIG}; train them with python -m "
                          f"moelab.train_predictor)")
    return json.loads(cfg.read_text())
