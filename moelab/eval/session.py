"""A moelab model opened for lm-eval's own command line (`python -m moelab.eval.harness run --model moelab ...`).

It composes the same Hydra config as `run.py`, loads the model and keeps it wired through the offload
executor for the lifetime of the process; no results row is written (use `python -m moelab.eval` for that).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


class Session:
    def __init__(self, om: Any, decoding: Any, stack: ExitStack):
        self.om, self.decoding, self.stack = om, decoding, stack

    @classmethod
    def from_args(cls, config: str = "config", overrides: list[str] | None = None) -> Session:
        from hydra import compose, initialize_config_dir

        from moelab import runner
        from moelab.core.context import RunContext
        from moelab.core.types import Execution
        from moelab.models.build import plan_model
        from moelab.models.drafts import choose_draft
        from moelab.offload.budget import GIB, resolve_budget

        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name=config, overrides=list(overrides or []))
        c = choose_draft(OmegaConf.to_container(cfg, resolve=True))  # as a run: the model's default draft
        comps = runner.build_components(c)
        device = runner.resolve_device(str(c.get("device", "auto")))
        plan = plan_model(c["model"], device)
        reserve = (runner.nonexpert_bytes(plan) + GIB) / GIB if device.type == "cuda" else 0.0
        budget = resolve_budget(c["budget"], plan.spec, device, reserve_gib=reserve)
        comps.cache.bind(RunContext(plan.spec, budget.experts))  # budget-dependent cache params, checked early
        om = runner.MODELS.get(c["model"], device, plan)
        execution = Execution.from_config(c.get("execution"))
        executor = runner.make_executor(om, budget, comps, c.get("cpu_dtype"), execution)
        executor.preload(comps.cache.preload())
        stack = ExitStack()
        stack.enter_context(runner.through_executor(om, executor, comps))
        return cls(om, comps.decoding, stack)

    def close(self) -> None:
        self.stack.close()
