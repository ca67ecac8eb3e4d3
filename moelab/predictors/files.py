"""Where trained predictors live on disk, readable without torch (policies read the config only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moelab.core.errors import ConfigError

CONFIG = "predictor.json"
WEIGHTS = "predictor.safetensors"


def read_predictor_config(path: str | Path) -> dict[str, Any]:
    cfg = Path(path) / CONFIG
    if not cfg.is_file():
        raise ConfigError(f"no MLP predictors at {path} (expected {CONFIG}; train them with python -m "
                          f"moelab.train_predictor)")
    return json.loads(cfg.read_text())
