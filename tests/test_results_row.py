"""The results row: its `policy` names what really ran, and every column is declared and documented."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moelab.models.drafts import choose_draft
from moelab.results.label import policy_label
from moelab.results.schema import COLUMNS, undeclared
from tests.conftest import ROOT

SMALL = ["model=tiny",
         "model.config.hidden_size=64", "model.config.intermediate_size=96", "model.config.num_attention_heads=4",
         "model.config.num_key_value_heads=2", "model.config.vocab_size=256", "device=cpu", "reference=false",
         "progress=false", "logger.console=false", "workload.num_prompts=1", "workload.max_new_tokens=3",
         "workload.ppl_tokens=8"]


def resolved(*overrides: str) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize(("overrides", "label"), [
    ((), "on_demand"),
    (("policy=qhs",), "qhs"),
    (("prefetch=qhs",), "on_demand+prefetch=qhs"),
    (("policy=spac", "cache=lru"), "spac+cache=lru"),
    (("policy=spac", "decoding.gamma=2"), "spac+decoding.gamma=2"),
    # the draft is a model (the `draft` column), whether the preset's default or named
    (("policy=spac", "decoding.draft.path=checkpoints/v1/code_draft"), "spac"),
    (("policy=qhs", "prefetch=qhs"), "qhs"),  # naming the preset's own choice again is not an override
    (("policy=qhs", "execution.speculative=router"), "qhs+execution.speculative=router"),
    (("policy=fiddler", "balancer=gpu_only", "cache.scratch=4"), "fiddler+cache.scratch=4+balancer=gpu_only"),
])
def test_policy_label_names_the_preset_and_every_override(overrides, label):
    assert policy_label(choose_draft(resolved(*overrides))) == label


def test_interpolated_keys_follow_and_are_not_overrides(tmp_path):
    conf = tmp_path / "conf"
    (conf / "policy").mkdir(parents=True)
    (conf / "prefetch").mkdir()
    (conf / "policy" / "p.yaml").write_text("defaults:\n  - /prefetch: a\npolicy: p\n")
    (conf / "prefetch" / "a.yaml").write_text("name: a\nk: ${top_k}\nd: 1\n")
    cfg = {"policy": "p", "top_k": 4, "prefetch": {"name": "a", "k": 4, "d": 1}}
    assert policy_label(cfg, conf) == "p"
    assert policy_label({**cfg, "prefetch": {"name": "a", "k": 4, "d": 2}}, conf) == "p+prefetch.d=2"


def test_a_run_with_an_overridden_prefetcher_is_not_recorded_as_the_baseline(tmp_path):
    from moelab.results.store import read_runs
    from moelab.runner import run

    cfg = resolved(*SMALL, "prefetch=qhs", f"results_dir={tmp_path}", "experiment_name=label")
    row = run(cfg)
    assert row["status"] == "ok" and row["policy"] == "on_demand+prefetch=qhs"
    assert not undeclared(row)
    assert read_runs(tmp_path, "label").iloc[-1]["policy"] == "on_demand+prefetch=qhs"


def test_every_declared_column_is_defined_in_the_metrics_doc():
    doc = (ROOT / "docs" / "METRICS.md").read_text()
    defined = set(re.findall(r"`([a-z0-9_]+)`", doc))
    missing = [c for c in COLUMNS if c not in defined]
    assert not missing, f"columns without a definition in docs/METRICS.md: {missing}"
