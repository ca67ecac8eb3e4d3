"""The prediction policies end to end through `run.py` and `python -m moelab.train_predictor`: the oracle's
first pass, learned predictors that beat a constant guess, qhs replayed from a trace, accuracy columns."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from tests.test_cli import QUICK, run_cli, runs


def test_oracle_and_speculative_execution_through_the_runner(tmp_path):
    p = run_cli(tmp_path, "policy=oracle", "experiment_name=pol", "workload.max_new_tokens=6")
    assert p.returncode == 0, p.stderr
    p = run_cli(tmp_path, "policy=qhs", "execution.speculative=none,router", "experiment_name=pol",
                "workload.max_new_tokens=6", multirun=True)
    assert p.returncode == 0, p.stderr
    df = runs(tmp_path, "pol").set_index(["prefetch", "speculative_execution"])
    oracle = df.loc[("oracle", False)]
    # 4 layers x top-2 = 8 experts a step fit the 16 slots: the oracle brings all of them ahead of need
    assert oracle.status == "ok" and oracle.h2d_bytes_demand == 0 and oracle.hit_rate == 1.0
    assert oracle.prediction_topk_recall == 1.0 and oracle.token_agreement == 1.0
    qhs, spec = df.loc[("qhs", False)], df.loc[("qhs", True)]
    assert qhs.token_agreement == 1.0 and qhs.ppl_delta == 0.0 and 0 < qhs.prediction_topk_recall < 1
    assert set(json.loads(qhs.prediction_recall_layers)) == {"1", "2", "3"}  # layer 0 has nothing before it
    assert spec.spec_exec_changed > 0 and spec.token_agreement < 1.0 and spec.ppl_delta != 0.0


def test_learned_predictors_beat_a_constant_guess_and_plug_into_the_run(tmp_path):
    out = tmp_path / "pred"
    p = subprocess.run([sys.executable, "-m", "moelab.train_predictor", *QUICK, "device=cpu",
                        f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'hydra'}",
                        "workload.max_new_tokens=24", "workload.num_prompts=6", f"predictor.out={out}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    report = pd.read_csv(out / "report.csv")
    assert list(report.target) == [1, 2, 3]
    assert (report.loss_after < report.loss_before).all()
    assert report.val_recall_mlp.mean() > report.val_recall_constant.mean()
    p = run_cli(tmp_path, "policy=mlp", f"prefetch.path={out}", "prefetch.layers=[2,3]", "experiment_name=mlp")
    assert p.returncode == 0, p.stderr
    row = runs(tmp_path, "mlp").iloc[0]
    assert row.status == "ok" and row.token_agreement == 1.0 and row.h2d_bytes_prefetch > 0
    bad = run_cli(tmp_path, "policy=mlp", f"prefetch.path={out}", "prefetch.layers=[0]", "experiment_name=mlp")
    assert bad.returncode == 2 and "no trained MLP" in bad.stderr


def test_qhs_under_replay_reproduces_the_recorded_predictions(tmp_path):
    """Replaying a trace into the same model: qhs takes the trace's recorded predictions, which are what the
    model's own routers predicted, so its per-layer recall equals the native run's exactly."""
    p = run_cli(tmp_path, "policy=qhs", "record_trace=true", "experiment_name=native")
    assert p.returncode == 0, p.stderr
    native = runs(tmp_path, "native").iloc[0]
    p = run_cli(tmp_path, "policy=qhs", "routing=replay", f"routing.trace={native.trace_path}",
                "experiment_name=replay")
    assert p.returncode == 0, p.stderr
    replay = runs(tmp_path, "replay").iloc[0]
    assert replay.status == "ok"
    assert json.loads(replay.prediction_recall_layers) == json.loads(native.prediction_recall_layers)
    bad = run_cli(tmp_path, "policy=qhs", "prefetch.state=layer_output", "routing=replay",
                  f"routing.trace={native.trace_path}", "experiment_name=replay")
    assert bad.returncode == 2 and "post_attn" in bad.stderr


def test_bad_prefetch_settings_fail_before_loading(tmp_path):
    for args, needle in ((["policy=qhs", "prefetch.state=nope"], "allowed: post_attn"),
                         (["policy=qhs", "prefetch.distance=0"], "distance must be >= 1"),
                         (["policy=ar_binary", "prefetch.decay=1.5"], "decay"),
                         (["policy=mlp"], "prefetch.path")):
        p = run_cli(tmp_path, *args)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
