"""`python -m moelab.train_predictor [run overrides] [predictor.*=...]`: record a routing trace (with the
post-attention states) through the executor on the run's model and workload, train one MLP predictor per
layer, save them and print how they compare with qhs and a constant guess on held-out steps.

Use them with `python run.py policy=mlp prefetch.path=<printed path> [prefetch.layers=[...]]`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def train_and_save(c: dict[str, Any]) -> tuple[Path, Any]:
    """Record the trace of the run `c` (a resolved train_predictor config), train, save; the folder and report."""
    from moelab.core.errors import ConfigError
    from moelab.predictors.mlp import save_predictors
    from moelab.predictors.train import train_predictors
    from moelab.runner import run

    c = dict(c)
    p = c.pop("predictor")
    if c["routing"]["name"] != "native":
        raise ConfigError("predictors learn from the model's own hidden states: use routing=native")
    row = run({**c, "record_trace": True, "record_states": True})
    models, info, report = train_predictors(
        row["trace_path"], distance=int(p["distance"]), width=int(p["width"]), epochs=int(p["epochs"]),
        lr=float(p["lr"]), batch_size=int(p["batch_size"]), weight_decay=float(p["weight_decay"]),
        val_every=int(p["val_every"]), seed=int(c.get("seed", 0)), progress=bool(c.get("progress", True)))
    out = Path(p["out"] or Path(row["trace_path"]).parent / f"predictors_d{p['distance']}")
    workload = c["workload"]
    info["workload"] = {k: workload[k] for k in ("name", "split", "num_prompts", "max_new_tokens") if k in workload}
    save_predictors(out, models, info)
    report.to_csv(out / "report.csv", index=False)
    return out, report


@hydra.main(version_base=None, config_path=CONF, config_name="train_predictor")
def main(cfg: DictConfig) -> None:
    from moelab.core.errors import MoelabError

    try:
        out, report = train_and_save(OmegaConf.to_container(cfg, resolve=True))
    except MoelabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.round(3).to_string(index=False))
    print(f"mean held-out top-k recall: mlp {report.val_recall_mlp.mean():.3f} | qhs "
          f"{report.val_recall_qhs.mean():.3f} | constant {report.val_recall_constant.mean():.3f}")
    print(f"predictors: {out}")


if __name__ == "__main__":
    main()
