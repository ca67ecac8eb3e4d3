"""The untimed warm-up (moelab.runner `RunRecipe.warm_up`) runs every (phase, tokens) shape the timed pass runs:
a prefill and a one-token decode step of each batch size; under speculative decoding, verification passes of
gamma+1 tokens and of every shorter length the timed pass ends prompts with. It leaves the executor reset. Shapes
only: no timing is asserted. Every row also names its device (`device_name`, `device_index`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import hydra
import pytest

from moelab.decoding.base import Decoding
from moelab.results.schema import COLUMNS
from moelab.runner import RunRecipe, run
from tests.conftest import ROOT

# 2 MoE layers x 8 experts, vocabulary 256 (as tests/test_assembly.py)
SMALL = ["model=tiny",
         "model.config.hidden_size=64", "model.config.intermediate_size=96", "model.config.num_hidden_layers=2",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.config.num_local_experts=8",
         "model.config.vocab_size=256"]
BASE = [*SMALL, "workload=builtin", "workload.ppl_tokens=0", "budget.fraction=0.5", "device=cpu", "reference=false",
        "progress=false", "logger.console=false"]


def shape(step: Any) -> tuple:
    """A step's shape: a prefill by its phase and rows (prompt lengths differ), any other step by its phase, rows
    and tokens per sequence."""
    if step.phase == "prefill":
        return ("prefill", step.rows)
    return (step.phase, step.rows, step.tokens // step.rows)


@pytest.fixture
def passes(monkeypatch, tmp_path):
    """Run a config; returns (row, {pass: set of step shapes}, what the executor held right after the warm-up)."""

    def go(*overrides: str) -> tuple[dict, dict[str, set], dict]:
        seen: dict[str, set] = defaultdict(set)
        current = {"pass": "setup"}
        after: dict[str, Any] = {}
        for name in ("reference", "warm_up", "profile", "timed", "accuracy"):
            original = getattr(RunRecipe, name)

            def wrapped(self, _name=name, _original=original):
                current["pass"] = _name
                try:
                    return _original(self)
                finally:
                    if _name == "warm_up":
                        ex = self.executor
                        after.update(routing=list(ex.counters.routing), evictions=ex.counters.evictions,
                                     stats=self.comps.decoding.stats(),
                                     script=getattr(self.comps.decoding, "script", None),
                                     eos=getattr(self.comps.decoding, "stop_at_eos", None))

            monkeypatch.setattr(RunRecipe, name, wrapped)
        for cls in set(_subclasses(Decoding)):
            if "generate" not in vars(cls):
                continue
            original_gen = cls.generate

            def gen(self, *a, _original=original_gen, **kw):
                out = _original(self, *a, **kw)
                seen[current["pass"]].update(shape(s) for s in out.steps)
                return out

            monkeypatch.setattr(cls, "generate", gen)
        with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = hydra.compose("config", overrides=[*BASE, f"results_dir={tmp_path}", *overrides])
        row = run(cfg)
        assert row["status"] == "ok", row.get("error")
        return row, seen, after

    return go


def _subclasses(cls: type) -> list[type]:
    import moelab.decoding.autoregressive  # noqa: F401  (registered loops)
    import moelab.decoding.speculative  # noqa: F401

    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_autoregressive_warm_up_runs_a_prefill_and_a_decode_of_every_batch_size(passes):
    # 3 prompts in batches of 2: a batch of 2 and a batch of 1, each with its own decode shape
    row, seen, after = passes("workload.num_prompts=3", "workload.batch_size=2", "workload.max_new_tokens=4")
    assert seen["timed"] == {("prefill", 2), ("prefill", 1), ("decode", 2, 1), ("decode", 1, 1)}
    assert seen["timed"] <= seen["warm_up"]
    assert not after["routing"] and after["evictions"] == 0  # reset afterwards


@pytest.mark.parametrize("gamma, new_tokens", [(3, 6), (4, 3)])
def test_speculative_warm_up_verifies_every_length_the_timed_pass_does(passes, gamma, new_tokens):
    row, seen, after = passes("decoding=speculative", f"decoding.gamma={gamma}", "workload.num_prompts=2",
                              f"workload.max_new_tokens={new_tokens}")
    longest = min(gamma, new_tokens - 1) + 1
    verify = {s for s in seen["timed"] if s[0] == "verify"}
    # a random draft is rarely accepted: prompts end on shorter passes, so the timed pass has several lengths
    assert ("verify", 1, longest) in verify and len(verify) >= 2
    assert seen["timed"] <= seen["warm_up"]
    # every length from gamma+1 down to 2, exactly once each (one prefill + one pass per length), nothing else
    assert seen["warm_up"] == {("prefill", 1), *(("verify", 1, n) for n in range(2, longest + 1))}
    assert not after["routing"]  # the executor reset afterwards
    # the decoding's own state is back: no script, EOS stop as configured, no statistics from the warm-up
    assert after["script"] is None and after["eos"] is False and after["stats"]["verifications"] == 0
    assert row["verifications"] > 0 and row["acceptance_rate"] >= 0  # the timed pass's own statistics


def test_the_row_names_its_device(passes):
    row, _, _ = passes("workload.num_prompts=1", "workload.max_new_tokens=2")
    assert row["device"] == "cpu" and row["device_name"].startswith("cpu") and row["device_index"] is None
    assert "device_index" in COLUMNS  # declared, so the row passed `check_row`
