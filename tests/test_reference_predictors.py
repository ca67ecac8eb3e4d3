"""The committed MLP predictors of the reference models (checkpoints/v1/predictors/<model>_d1): small, trained on
the training split only, better than a constant guess on held-out steps, found by the model presets, and usable
for speculative execution with their own weights (`execution.speculative=predicted`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moelab.models.hub import in_checkout
from moelab.predictors.mlp import load_predictors
from moelab.runner import run
from tests.conftest import ROOT

V1 = ROOT / "checkpoints" / "v1"
TARGETS = {"code_moe": 16, "code_moe_fine": 64}  # experts per layer


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("target", list(TARGETS))
def test_committed_predictors_are_small_trained_on_the_training_split_and_beat_a_constant(target):
    folder = V1 / "predictors" / f"{target}_d1"
    assert all(f.stat().st_size < 1_000_000 for f in folder.iterdir())
    info = json.loads((folder / "predictor.json").read_text())
    assert info["distance"] == 1 and info["num_experts"] == TARGETS[target]
    assert info["workload"]["name"] == "code_heldout" and info["workload"]["split"] == "train"
    models, _ = load_predictors(folder, torch.device("cpu"), torch.float32)
    assert sorted(models) == list(range(1, 8))  # every MoE layer that has one before it
    report = pd.read_csv(folder / "report.csv")
    assert (report.val_recall_mlp > report.val_recall_constant).all()
    # the model preset names them, so policy=mlp needs no path on the reference models
    cfg = composed(f"model={target}", "policy=mlp")
    assert in_checkout(cfg["prefetch"]["path"]).resolve() == folder.resolve()


def test_spec_exec_tasks_sweeps_predictors_by_weights_mode():
    cfg = composed("+experiment=spec_exec_tasks")
    params = OmegaConf.load(ROOT / "conf" / "experiment" / "spec_exec_tasks.yaml").hydra.sweeper.params
    assert params["execution.speculative"] == "none,router,predicted"
    for predictor in params["+experiment/predictor"].split(","):
        c = composed("+experiment=spec_exec_tasks", f"+experiment/predictor={predictor}", "model=code_moe_fine")
        assert c["prefetch"]["name"] in ("qhs", "mlp") and c["workload"]["split"] == "heldout"
        assert c["prefetch"]["name"] != "mlp" or c["prefetch"]["path"].endswith("predictors/code_moe_fine_d1")
    assert cfg["workload"]["name"] == "code_heldout" and cfg["reference"] is True


def test_mlp_predicted_weights_run_on_the_reference_model(tmp_path):
    """Speculative execution with the committed MLPs: `predicted` runs them with their own weights, `router`
    with the true router's over the same experts; both change what runs and so the tokens' scores."""
    rows = {}
    for mode in ("router", "predicted"):
        cfg = composed("model=code_moe", "model.dtype=float32", "device=cpu", "policy=mlp",
                       f"execution.speculative={mode}", "workload.num_prompts=1", "workload.max_new_tokens=6",
                       "reference=true", f"results_dir={tmp_path}", "progress=false", "logger.console=false")
        rows[mode] = run(cfg)
        assert rows[mode]["status"] == "ok" and rows[mode]["speculative_mode"] == mode
        assert rows[mode]["spec_exec_changed"] > 0
    assert rows["predicted"]["ppl_delta"] != rows["router"]["ppl_delta"]
