"""Task accuracy through lm-evaluation-harness: moelab's `LM` answers every request type through the offload
executor exactly as the plain model does, a run scores tasks into its row and saves lm-eval's JSON beside it,
and an unknown task is one line, exit 2, before any weight loads. Offline: moelab's own code-line tasks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import hydra
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from moelab import runner
from moelab.core.errors import ConfigError
from moelab.decoding.autoregressive import AutoregressiveDecoding
from moelab.eval.lm import MoelabLM
from tests.conftest import ROOT, make_executor, offloaded_copy, tiny_hf_model

CONTEXT, CONTINUATION = "def add(a, b):\n    return", " a + b\n"
DOC = "import os\n\nfor name in os.listdir('.'):\n    print(name)\n"
# 2 MoE layers x 8 experts, vocabulary 256: a whole runner pass takes well under a second
SMALL = ["model=tiny",
         "model.config.hidden_size=64", "model.config.intermediate_size=96", "model.config.num_hidden_layers=2",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.config.num_local_experts=8",
         "model.config.vocab_size=256"]


def req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def plain_and_offloaded():
    model = tiny_hf_model("mixtral")
    om = offloaded_copy(model)
    return model, om, make_executor(om, capacity=3)  # 3 of 8 experts per layer on the "GPU": real misses


@torch.no_grad()
def plain_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1 under the unmodified transformers model."""
    logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return F.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_every_request_type_through_the_executor_equals_the_plain_model(plain_and_offloaded):
    model, om, executor = plain_and_offloaded
    enc = om.tokenizer.encode
    answers = {}
    for name, backend in (("executor", executor), ("reference", om.reference)):
        with om.using(backend):
            lm = MoelabLM(om, AutoregressiveDecoding())
            full = lm.generate_until([req("generate_until", CONTEXT, {"until": [], "max_gen_toks": 12})])[0]
            stop = full[5:7]
            answers[name] = (
                lm.loglikelihood([req("loglikelihood", CONTEXT, CONTINUATION), req("loglikelihood", CONTEXT, " a")]),
                lm.loglikelihood_rolling([req("loglikelihood_rolling", DOC)]),
                full,
                lm.generate_until([req("generate_until", CONTEXT, {"until": [stop], "max_gen_toks": 12})])[0],
                stop,
            )
    assert answers["executor"] == answers["reference"]  # bitwise: speculative execution is off
    (ll, ll_short), rolling, full, cut, stop = answers["executor"]
    ctx, cont = enc(CONTEXT), enc(CONTINUATION)
    want = float(plain_logprobs(model, ctx + cont)[-len(cont):].sum())
    assert ll[0] == pytest.approx(want, abs=1e-4) and ll[0] < ll_short[0] < 0
    assert rolling[0] == pytest.approx(float(plain_logprobs(model, [0] + enc(DOC)).sum()), abs=1e-4)
    assert len(full) > 7 and cut == full[: full.index(stop)]


def _cfg(tmp_path, *overrides: str):
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra.compose("config", overrides=[
            *SMALL, "device=cpu", f"results_dir={tmp_path / 'results'}", "progress=false",
            "logger.console=false", "eval.include_defaults=false", *overrides])


def test_a_run_scores_tasks_into_its_row_and_saves_lm_eval_json(tmp_path):
    row = runner.run(_cfg(tmp_path, "workload=code_heldout", "workload.num_prompts=1", "workload.max_new_tokens=2",
                          "workload.ppl_docs=2", "workload.ppl_tokens=48",
                          "eval.tasks=[code_line_em,code_line_greedy,code_line_rolling]", "eval.limit=2",
                          "eval.gen_kwargs={max_gen_toks:4}", "eval.bootstrap_iters=0", "eval.max_length=96"))
    assert row["status"] == "ok" and row["ppl_docs"] == 2 and row["ppl_tokens_scored"] == 94
    assert row["ppl"] == row["ppl_ref"] and row["ppl_delta"] == 0.0  # exact through the executor
    saved = json.loads((tmp_path / "results" / "default" / row["run_id"] / "lm_eval.json").read_text())
    res = saved["results"]
    assert row["task_score.code_line_em.exact_match"] == res["code_line_em"]["exact_match,none"]
    assert row["task_score.code_line_greedy.acc"] == res["code_line_greedy"]["acc,none"]
    assert math.isfinite(row["task_score.code_line_rolling.bits_per_byte"]) and row["task_samples.code_line_em"] == 2
    import pandas as pd

    stored = pd.read_parquet(tmp_path / "results" / "default" / "runs.parquet").iloc[-1]
    assert stored["task_score.code_line_greedy.perplexity"] == row["task_score.code_line_greedy.perplexity"]


def test_unknown_task_is_refused_before_any_weight_loads(tmp_path):
    loads = runner.MODELS.loads
    with pytest.raises(ConfigError) as e:
        runner.run(_cfg(tmp_path, "eval.tasks=[code_line_em,no_such_task]", "model.seed=4243"))
    assert str(e.value).startswith("unknown lm-eval task(s) no_such_task") and "code_line_em" in str(e.value)
    assert runner.MODELS.loads == loads


def test_python_m_moelab_eval_says_one_line_and_exits_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "moelab.eval", "model=tiny", "tasks=nope", "eval.include_defaults=false",
                        f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: unknown lm-eval task(s) nope"), p.stderr[-2000:]
    assert p.stderr.strip().count("\n") == 0


def test_lm_eval_builds_the_moelab_model_from_model_args():
    """What `python -m moelab.eval.harness run --model moelab --model_args overrides=...` does: compose the
    config, open the model wired through the executor (overrides split on spaces or ';': lm-eval splits
    model_args on ',')."""
    lm = get_model("moelab").create_from_arg_string("overrides=" + ";".join([*SMALL, "device=cpu", "policy=qhs"]))
    try:
        assert type(lm.om.backend).__name__ != "ReferenceBackend"
        (ll, _), = lm.loglikelihood([req("loglikelihood", CONTEXT, CONTINUATION)])
        assert ll < 0 and lm.om.spec.num_experts == 8
    finally:
        lm.session.close()


def test_moelab_lm_eval_is_an_installed_command_running_the_harness():
    """The installed `moelab-lm-eval` command is lm-eval's CLI with moelab registered (moelab.eval.harness.main)."""
    from importlib.metadata import entry_points

    from moelab.eval import harness

    (script,) = entry_points(group="console_scripts", name="moelab-lm-eval")
    assert script.load() is harness.main


@pytest.mark.parametrize("model", ["code_moe", "code_moe_fine"])
def test_code_line_tasks_cut_where_the_tokenizer_does(model):
    """Context and target of every shipped code-line example tokenize apart exactly as they do together: the
    model scored on a target starts from the tokens it saw in training (a context ending in a bare newline
    before indented code did not, and exact match was 0 even for the un-offloaded model)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "checkpoints" / "v1" / model)
    rows = [json.loads(line) for line in (ROOT / "moelab" / "eval" / "task_configs" / "code_lines.jsonl").open()]
    assert len(rows) == 40
    for r in rows:
        assert tok.encode(r["context"]) + tok.encode(r["target"]) == tok.encode(r["context"] + r["target"]), r
