"""Opening a dataset with `datasets`: a local file, a local folder or saved dataset, or a hub name.

A hub name with no network would make `datasets` retry for minutes; the hub is probed once with a short
timeout and, when it cannot be reached, `datasets` and `huggingface_hub` are switched to offline mode so
that a cached copy is used and a missing one fails at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from moelab.core.errors import ConfigError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".txt": "text"}
TRUE = ("1", "true", "yes", "on")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within `timeout_s` (False when offline mode is set)."""
    if any(os.environ.get(k, "").lower() in TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Offline mode for this process, also for modules that read the flags at import."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _pick_split(ds: Any, split: str, where: str) -> Any:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConfigError(f"{where} has no split {split!r}; splits: {', '.join(ds)}")
        return ds[split]
    return ds


def load_records(path: str, config: str | None = None, split: str = "train") -> Any:
    """The rows of one split as a `datasets.Dataset`."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(str(path)).expanduser()
    try:
        if local.is_file():
            builder = BUILDERS.get("".join(local.suffixes[-1:]).lower())
            if builder is None:
                raise ConfigError(f"workload.path {path}: unknown file type; allowed: {', '.join(BUILDERS)}, a "
                                  "folder, a saved dataset, or a hub dataset name")
            # a file is one split (`train`); a slice of it still applies: split=train[:500]
            part = "train" + (split[split.index("["):] if "[" in split else "")
            return datasets.load_dataset(builder, data_files=str(local), split=part)
        if local.is_dir():
            if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
                return _pick_split(datasets.load_from_disk(str(local)), split, f"saved dataset {path}")
            return datasets.load_dataset(str(local), config, split=split)
        if local.is_absolute() or str(path).startswith((".", "~")) or local.suffix.lower() in BUILDERS:
            raise ConfigError(f"workload.path {path} does not exist")
        if not hub_reachable():
            go_offline()
        return datasets.load_dataset(str(path), config, split=split)
    except ConfigError:
        raise
    except Exception as e:  # datasets raises many types; all mean "cannot open this input"
        msg = " ".join(str(e).split())[:300]
        if not local.exists() and os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE:
            raise ConfigError(f"dataset {path!r} is not cached and the Hugging Face hub is unreachable (offline); "
                              f"download it once online, or pass a local file: workload.path=data.jsonl "
                              f"(jsonl, json, parquet, csv, arrow or a saved dataset) ({type(e).__name__})") from None
        raise ConfigError(f"cannot load dataset {path!r} (config={config}, split={split}): {msg}") from None
