"""The one assembly of a run (moelab.assembly): every entry point assembles through it, every configuration error
is raised before any weight is read, components that need a profile pass are refused where lm-eval's requests are
served (eval.tasks, `--model moelab`), and the eval package does not import the runner."""

from __future__ import annotations

import subprocess
import sys

import hydra
import pytest
from omegaconf import OmegaConf

from moelab import assembly
from moelab.assembly import MODELS, assemble, plan_run
from moelab.core.errors import ConfigError
from tests.conftest import ROOT

# 2 MoE layers x 8 experts, vocabulary 256 (as tests/test_eval.py)
SMALL = ["model=tiny",
         "model.config.hidden_size=64", "model.config.intermediate_size=96", "model.config.num_hidden_layers=2",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.config.num_local_experts=8",
         "model.config.vocab_size=256"]
TRACES = ROOT / "checkpoints/v1/traces"


def compose(*overrides: str) -> dict:
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra.compose("config", overrides=["device=cpu", "progress=false", "logger.console=false",
                                                 "eval.include_defaults=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def refused(cfg: dict, serves: str = "run") -> str:
    """The ConfigError of planning `cfg`; no model may be loaded for it."""
    loads = MODELS.loads
    with pytest.raises(ConfigError) as e:
        assemble(cfg, serves=serves)  # type: ignore[arg-type]
    assert MODELS.loads == loads
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("policy, key", [
    (["prefetch=oracle"], "prefetch=oracle"),
    (["cache=belady"], "cache=belady"),
    (["cache=static", "cache.profile=run"], "cache=static with cache.profile=run"),
])
def test_needs_future_is_refused_where_lm_eval_requests_are_served(policy, key):
    """oracle/belady know the routing of the run's own prompts from a profile pass; lm-eval's requests have no
    such pass: refused in one line, naming the key and what is allowed, before any weight loads."""
    msg = refused(compose(*SMALL, *policy, "eval.tasks=[code_line_em]"))
    assert msg.startswith(f"{key} needs the routing of the requests it serves in advance")
    kind = key.split("=")[0]
    assert f"allowed with eval.tasks: {kind}=" in msg and "oracle" not in msg.split("allowed")[1]
    assert "belady" not in msg.split("allowed")[1]
    msg = refused(compose(*SMALL, *policy), serves="lm_eval")
    assert msg.startswith(f"{key} needs") and f"allowed under lm-eval (--model moelab): {kind}=" in msg


def test_lm_eval_model_args_with_the_oracle_are_refused_before_any_weight_loads():
    from lm_eval.api.registry import get_model

    import moelab.eval.lm  # noqa: F401  (registers the `moelab` model)

    loads = MODELS.loads
    with pytest.raises(ConfigError, match=r"^prefetch=oracle needs"):
        get_model("moelab").create_from_arg_string("overrides=" + ";".join([*SMALL, "device=cpu", "policy=oracle"]))
    assert MODELS.loads == loads


def test_oracle_without_tasks_still_plans():
    planned = plan_run(compose(*SMALL, "policy=oracle"))
    assert planned.comps.prefetch.needs_future and planned.eval_tasks == []


@pytest.mark.parametrize("overrides, start", [
    # make_lookahead's checks (they used to fail after the weights loaded)
    (["policy=on_demand", "execution.speculative=predicted"], "execution.speculative=predicted runs the predictor"),
    (["prefetch=qhs", "prefetch.k=1", "execution.speculative=predicted"], "execution.speculative=predicted runs the "
                                                                          "predicted top_k: prefetch.k=1"),
    # RunRecipe._inputs' checks of a replayed trace, decided from its header
    (["model=code_moe", "routing=replay", f"routing.trace={TRACES / 'code_moe_ar.parquet'}", "record_trace=true"],
     "record_trace=true records a model's own routing"),
    (["model=code_moe", "routing=replay", f"routing.trace={TRACES / 'code_moe_g2.parquet'}"],
     "the trace"),
    (["model=code_moe", "routing=replay", f"routing.trace={TRACES / 'code_moe_ar.parquet'}", "prefetch=qhs",
      "prefetch.state=layer_output"], "under routing=replay qhs replays"),
])
def test_late_config_errors_are_raised_before_any_weight_is_read(overrides, start):
    model = [] if any(o.startswith("model=") for o in overrides) else SMALL
    msg = refused(compose(*model, *overrides))
    assert msg.startswith(start), msg


def test_one_assembly_for_a_run_and_for_lm_eval():
    """The same config assembles to the same model, budget and inputs for run.py and for lm-eval; lm-eval's
    requests run through the eager executor (the row says so)."""
    cfg = compose(*SMALL, "budget.gpu_experts=6")
    row: dict = {}
    run = assemble(cfg, row=row)
    assert run.run.budget.experts == 6 and run.executor.capacity == 6
    assert run.batches and run.new_tokens == run.run.comps.workload.max_new_tokens
    assert row["execution_path"] == "eager" and row["budget_experts"] == 6 and row["experts"] == 8
    served = assemble(cfg, serves="lm_eval", row=(lm_row := {}))
    assert served.om is run.om  # the memo keeps the model
    assert lm_row["graph_note"] == assembly.LM_EVAL_PATH_NOTE
    with pytest.raises(ConfigError, match=r"^execution.graphs=on: lm-eval's requests"):
        plan_run(compose(*SMALL, "execution.graphs=on"), serves="lm_eval")


def test_eval_does_not_import_the_runner():
    """The runner <-> eval import cycle is gone: lm-eval's model and session assemble through moelab.assembly."""
    code = ("import sys, moelab.eval.lm, moelab.eval.session, moelab.eval.tasks, moelab.eval.harness; "
            "print('moelab.runner' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    for path in (ROOT / "moelab" / "eval").glob("*.py"):
        text = path.read_text()
        assert "moelab.runner" not in text and "from moelab import runner" not in text, path
