"""A moelab model opened for lm-eval's own command line (`python -m moelab.eval.harness run --model moelab ...`).

It composes the same Hydra config as `run.py` and assembles the run through the one assembly
(`moelab.assembly.assemble`, `serves="lm_eval"`): the same config, budget and host-memory checks before any weight
is read, then the model wired through the offload executor for the lifetime of the process. Components that need
a profile pass over the run's own prompts (prefetch=oracle, cache=belady, cache=static with profile=run) are
refused there in one line: lm-eval's requests are not known in advance. No results row is written (use
`python -m moelab.eval` for that).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


class Session:
    def __init__(self, om: Any, decoding: Any, stack: ExitStack, assembly: Any = None):
        self.om, self.decoding, self.stack = om, decoding, stack
        self.assembly = assembly  # the moelab.assembly.Assembly it runs through

    @classmethod
    def from_args(cls, config: str = "config", overrides: list[str] | None = None) -> Session:
        from hydra import compose, initialize_config_dir

        from moelab.assembly import assemble

        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose(config_name=config, overrides=list(overrides or []))
        c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        run = assemble(c, serves="lm_eval")
        run.executor.preload(run.comps.cache.preload())  # a static hot set from a recorded profile
        stack = ExitStack()
        stack.enter_context(run.through())
        return cls(run.om, run.comps.decoding, stack, assembly=run)

    def close(self) -> None:
        self.stack.close()
