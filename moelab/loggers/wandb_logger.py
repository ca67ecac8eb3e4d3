"""`logger=wandb`: the local results (always written first) mirrored to Weights & Biases.

Each run becomes one W&B run: its config is the run's resolved config (rebuilt from the row's
`cfg.*` columns), its history the per-step table, its summary the row's metrics. Without credentials
(no WANDB_API_KEY, no netrc entry for the W&B host) it runs offline, so it never waits on a network or
a login; `wandb sync DIR` uploads later. A W&B failure is a warning: the run and its local row stand.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.loggers.local import LocalLogger

MODES = ("auto", "online", "offline", "disabled")


def has_credentials() -> bool:
    """Whether wandb could log in without asking: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def config_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run's resolved config, nested again from the row's flattened `cfg.a.b` columns."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if not key.startswith("cfg."):
            continue
        if isinstance(value, str) and value.startswith("["):
            try:
                value = json.loads(value)  # lists were stored as JSON
            except ValueError:
                pass
        node = out
        *parents, leaf = key[4:].split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _scalar(v: Any) -> Any:
    """A JSON-friendly scalar, or None for what W&B should not get (NaN, containers, missing)."""
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        v = v.item()
    if isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    return None


@register("logger", "wandb")
class WandbLogger(LocalLogger):
    def __init__(self, results_dir: str = "results", project: str = "moelab", entity: str | None = None,
                 tags: Sequence[str] = (), group: str | None = None, mode: str = "auto", dir: str | None = None,
                 console: bool = True, row_files: bool = False):
        super().__init__(results_dir=results_dir, console=console, row_files=row_files)
        if mode not in MODES:
            raise ConfigError(f"unknown logger.mode {mode!r}; allowed: {', '.join(MODES)}")
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logger=wandb needs the wandb package: pip install wandb (or pip install -e '.[dev]')") \
                from None
        self.project, self.entity, self.group = project, entity, group
        self.tags = [str(t) for t in (tags or [])]
        self.mode = mode
        self.dir = Path(dir or os.environ.get("WANDB_DIR") or self.results_dir)

    def resolved_mode(self) -> str:
        """auto: WANDB_MODE if set, else online with credentials and offline without."""
        if self.mode != "auto":
            return self.mode
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if env in ("online", "offline", "disabled", "dryrun"):
            return "offline" if env == "dryrun" else env
        return "online" if has_credentials() else "offline"

    def log_run(self, row: Mapping[str, Any], steps: pd.DataFrame | None) -> Path:
        """Write locally, then mirror to W&B; a W&B problem is reported, never raised."""
        runs = super().log_run(row, steps)
        mode = self.resolved_mode()
        if mode == "disabled":
            return runs
        try:
            self._send(row, steps, mode)
        except Exception as e:
            if mode == "online":  # no network or a rejected key: keep the run offline for `wandb sync`
                print(f"warning: W&B online logging failed ({type(e).__name__}: {e}); logging offline",
                      file=sys.stderr)
                try:
                    self._send(row, steps, "offline")
                except Exception as e2:
                    print(f"warning: W&B offline logging failed too ({type(e2).__name__}: {e2})", file=sys.stderr)
            else:
                print(f"warning: W&B logging failed ({type(e).__name__}: {e}); the local row is written",
                      file=sys.stderr)
        return runs

    def _send(self, row: Mapping[str, Any], steps: pd.DataFrame | None, mode: str) -> None:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        rid = str(row.get("run_id"))
        label = row.get("cfg.label") or row.get("policy") or "run"
        run = wandb.init(
            project=self.project, entity=self.entity, group=self.group or str(row.get("experiment")),
            tags=self.tags, name=f"{label}-{rid}", job_type=str(row.get("experiment")), config=config_from_row(row),
            mode=mode, dir=str(self.dir), reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off", init_timeout=60, x_disable_stats=True),
        )
        try:
            if steps is not None and len(steps):
                for i, rec in enumerate(steps.to_dict(orient="records")):
                    run.log({k: s for k, v in rec.items() if (s := _scalar(v)) is not None}, step=i)
            summary = {k: s for k, v in row.items()
                       if not k.startswith("cfg.") and k != "traceback" and (s := _scalar(v)) is not None}
            run.summary.update(summary)
            where = run.dir
        finally:
            run.finish(exit_code=0 if row.get("status") == "ok" else 1)
        if mode == "offline":
            print(f"wandb: offline run {rid} in {Path(where).parent} (upload: wandb sync {Path(where).parent})",
                  flush=True)
