"""`python run.py` end to end: the embedded default, a sweep that survives a failing run, and a clear
one-line error with a non-zero exit (never a traceback) for each kind of bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, tiny_hf_model

QUICK = ["model=tiny", "workload.max_new_tokens=3", "workload.num_prompts=2", "workload.ppl_tokens=16",
         "progress=false", "logger.console=false"]

METRICS_FIELDS = [
    "ttft_ms", "tpot_ms", "tpot_median_ms", "tpot_p90_ms", "tokens_per_s", "h2d_bytes_demand", "h2d_bytes_prefetch",
    "h2d_bytes_wasted", "copy_ms", "overlap", "stall_ms", "floor_ms_per_token", "efficiency", "hit_rate",
    "prefetch_precision", "prefetch_recall", "cpu_share", "token_agreement", "ppl", "ppl_delta", "model",
    "architecture", "layers", "experts", "top_k", "dtype", "policy", "cache", "balancer", "budget_experts",
    "budget_gib", "decoding", "gamma", "workload", "prompts", "new_tokens", "batch", "device_name", "torch_version",
    "transformers_version", "git_commit", "seed", "status", "error",
]


def run_cli(tmp_path: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), *QUICK,
            f"results_dir={tmp_path / 'results'}", "device=cpu",
            f"hydra.run.dir={tmp_path / 'hydra'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)


_PY_WARNING = re.compile(r"^(?P<path>.+?\.py):\d+: (?P<kind>\w*Warning): ")


def moelab_warnings(stderr: str) -> list[str]:
    """Warnings that moelab itself raised or printed: Python warnings whose origin is a file of this repository
    (moelab/, run.py), and moelab's own `warning:` console lines. Other libraries' warnings are theirs to fix."""
    mine = []
    for line in stderr.splitlines():
        m = _PY_WARNING.match(line.strip())
        if m and Path(m["path"]).resolve().is_relative_to(ROOT) and "site-packages" not in m["path"]:
            mine.append(line)
        elif line.lower().startswith("warning:"):
            mine.append(line)
    return mine


def runs(tmp_path: Path, experiment: str = "default") -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "results" / experiment / "runs.parquet")


def test_default_run_records_every_metric(tmp_path):
    """The README's command: the embedded default is the committed trained pair (model=code_moe)."""
    p = run_cli(tmp_path, "model=code_moe", "logger.console=true")
    assert p.returncode == 0, p.stderr
    assert "TPOT" in p.stdout and "hit rate" in p.stdout and "token agreement" in p.stdout
    df = runs(tmp_path)
    # the run ends by saying where its row went
    where = f"run {df.run_id.iloc[0]}: row in {tmp_path}/results/default/runs.parquet"
    assert p.stdout.strip().splitlines()[-1] == where
    assert len(df) == 1
    row = df.iloc[0]
    missing = [f for f in METRICS_FIELDS if f not in df.columns]
    assert not missing, missing
    assert row.status == "ok" and row.token_agreement == 1.0 and row.ppl_delta == 0.0
    assert row.budget_experts < row.total_experts  # the default really offloads
    assert row.h2d_bytes_prefill > 0
    steps = pd.read_parquet(tmp_path / "results" / "default" / row.run_id / "steps.parquet")
    assert set(steps.phase) == {"prefill", "decode"} and len(steps) == 2 * 3
    assert row.model == "code-moe" and row.architecture == "mixtral" and row.experts == 16


def test_the_embedded_default_is_the_committed_trained_pair():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["policy=spac"])
    assert cfg.model.path == "checkpoints/v1/code_moe" and not cfg.model.random_init
    assert cfg.model.draft == "checkpoints/v1/code_draft"


def test_sweep_records_a_failing_run_and_goes_on(tmp_path):
    p = run_cli(tmp_path, "budget.gpu_experts=1,16", multirun=True)
    assert p.returncode == 1, p.stderr  # the sweep went on, and its exit code says a point failed
    df = runs(tmp_path).sort_values("cfg.budget.gpu_experts")
    assert df.status.tolist() == ["failed", "ok"], df.error.tolist()
    assert "top_k" in df.error.iloc[0]
    failed = p.stdout.split("failed points (1):")[1].splitlines()  # the point's overrides, then its error
    assert "budget.gpu_experts=1" in failed[1] and "top_k" in failed[2], p.stdout


def test_record_a_trace_then_replay_it_into_a_bigger_model(tmp_path):
    p = run_cli(tmp_path, "record_trace=true", "experiment_name=rec")
    assert p.returncode == 0, p.stderr
    rec = runs(tmp_path, "rec").iloc[0]
    assert rec.trace_path.endswith("trace.parquet")
    p = run_cli(tmp_path, "routing=replay", f"routing.trace={rec.trace_path}", "experiment_name=rep",
                "model.config.num_local_experts=64", "model.config.num_hidden_layers=6")
    assert p.returncode == 0, p.stderr
    rep = runs(tmp_path, "rep").iloc[0]
    assert rep.status == "ok" and rep.experts == 64 and rep.layers == 6 and rep.token_agreement == 1.0
    assert rep.replay_trace == rec.trace_path and rep.prompts == 2 and rep.new_tokens == 3


def _bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    d = tmp_path / f"ckpt_{kind}"
    if kind == "dense":
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    else:
        tiny_hf_model("mixtral").save_pretrained(d)
        f = next(d.glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:-1000])
    return d


BAD = {
    "unknown_component": (["cache.name=lfu3"], ["'lfu3'", "lru"]),
    "unknown_prefetch": (["prefetch.name=psychic"], ["'psychic'", "none"]),
    "budget_below_top_k": (["budget.gpu_experts=1"], ["top_k=2", "2..64"]),
    "budget_above_memory": (["model=deepseek_v3", "model.random_init=true", "model.num_layers=61",
                             "budget.fraction=1.0"], ["free", "at most"]),
    "experts_above_host_ram": (["model=deepseek_v3", "model.random_init=true", "model.num_layers=61",
                                "budget.gpu_experts=8"], ["host memory", "model.num_layers"]),
    "missing_path": (["model=hf", "model.path=/nonexistent/model"], ["/nonexistent/model", "does not exist"]),
    "not_moe": (["model=hf", "model.path={dense}"], ["'llama'", "supported architectures", "mixtral"]),
    "no_adapter": (["model.arch=llama"], ["'llama'", "qwen3_moe"]),
    "corrupted": (["model=hf", "model.path={corrupted}", "model.dtype=float32"], ["corrupted safetensors"]),
    "zero_tokens": (["workload.max_new_tokens=0"], ["max_new_tokens", "0"]),
    "negative_tokens": (["workload.max_new_tokens=-4"], ["max_new_tokens", "-4"]),
    "bad_dtype": (["model.dtype=float8"], ["'float8'", "bfloat16"]),
    "bad_device": (["device=tpu"], ["'tpu'", "cpu"]),
    "missing_trace": (["routing=replay", "routing.trace=/no/trace.parquet"], ["/no/trace.parquet", "record_trace"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_clear_line(tmp_path, case):
    overrides, expected = BAD[case]
    paths = {"dense": None, "corrupted": None}
    for k in paths:
        if any("{" + k + "}" in o for o in overrides):
            paths[k] = _bad_checkpoint(tmp_path, "dense" if k == "dense" else "corrupted")
    overrides = [o.format(**{k: v for k, v in paths.items() if v is not None}) for o in overrides]
    # device=tpu must reach the device check: put it after the default device=cpu
    p = run_cli(tmp_path, *overrides)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    df = runs(tmp_path)
    assert df.status.tolist() == ["failed"] and df.error.iloc[0]


def test_unknown_config_group_option_lists_the_available_ones(tmp_path):
    p = run_cli(tmp_path, "cache=lfu3")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: unknown cache 'lfu3' (cache=lfu3); allowed: belady, fifo, lfu, lru, spac_released, static, utility"]
