"""`python -m moelab.calibrate [model=... device=...]`: measure this machine's cost model for the model's expert
shape (H2D copy, device and CPU expert time by tokens, the CPU path's fixed cost), cache it, and print it. Runs
whose balancer needs it measure it themselves when it is missing; this command forces a fresh measurement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base=None, config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> None:
    import pandas as pd

    from moelab.assembly import MODELS, resolve_device
    from moelab.core.errors import MoelabError
    from moelab.models.build import plan_model
    from moelab.offload.calibrate import cost_model as calibrated
    from moelab.offload.calibrate import cost_path
    from moelab.offload.cpu_worker import parse_cpu_dtype

    c = OmegaConf.to_container(cfg, resolve=True)
    try:
        device = resolve_device(str(c.get("device", "auto")))
        om = MODELS.get(c["model"], device, plan_model(c["model"], device))
        cm = calibrated(om, recalibrate=True, cpu_dtype=parse_cpu_dtype(c.get("cpu_dtype")))
    except MoelabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    table = pd.DataFrame({"tokens": [n for n, _ in cm.gpu], "device_ms": [t for _, t in cm.gpu],
                          "cpu_ms": [t for _, t in cm.cpu]})
    table["cpu_faster_than_fetch"] = cm.cpu_fixed_ms + table.cpu_ms < cm.h2d_ms + table.device_ms
    print(f"{cm.key['device']} | expert {cm.expert_bytes / 2**20:.2f} MiB | H2D {cm.h2d_ms:.3f} ms "
          f"({cm.h2d_gbps:.1f} GB/s) | {cm.key['cpu_threads']} CPU threads ({cm.key['cpu_dtype']}) | CPU path "
          f"{cm.cpu_fixed_ms:.3f} ms per layer call")
    print(table.to_string(index=False, float_format="%.4f"))
    print(f"saved: {cost_path(cm.key)}")


if __name__ == "__main__":
    main()
