"""`python -m moelab.train`: a tiny config trains, saves loadable checkpoints with model cards, and a run
cut short resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from moelab.train.corpus import list_sources, read_split
from moelab.train.data import TokenWindows
from moelab.train.loop import train
from tests.conftest import ROOT, tiny_hf_model


def test_corpus_split_is_by_path_hash_and_capped():
    files = list_sources()
    assert len(files) > 100 and [f.rel for f in files] == sorted(f.rel for f in files)
    val = {f.rel for f in files if f.is_val(50)}
    assert 0 < len(val) < len(files) / 5
    texts = list(read_split(files, True, 50, 100_000))
    assert all(f.rel in val for f, _ in texts)
    assert sum(len(t.encode()) for _, t in texts) < 100_000 + 500_000  # stops at the first file past the cap


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    p = subprocess.run([sys.executable, "-m", "moelab.train", "train=tiny", f"out_dir={out}", "progress=false",
                        f"hydra.run.dir={out / 'hydra'}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_tiny_training_run_produces_models_and_cards(trained):
    summary = json.loads((trained / "summary.json").read_text())
    vocab = json.loads((trained / "data" / "meta.json").read_text())["vocab_size"]
    for name in ("target", "draft"):
        facts = summary[name]
        assert facts["steps"] == 20
        assert facts["val_loss"] < torch.log(torch.tensor(float(vocab))).item()  # learned something in 20 steps
        card = (trained / name / "README.md").read_text()
        for fact in ("val_loss", "corpus_bytes", "corpus_tokens", "train_wall_s", "draft_acceptance_rate"):
            assert fact in card
        assert (trained / name / "tokenizer.json").exists()
    assert "load entropy" in (trained / "target" / "README.md").read_text()
    assert 0.0 <= summary["draft_acceptance_rate"] <= 1.0
    assert len(summary["routing"]["layers"]) == 2


def test_trained_target_runs_offloaded_and_exact(trained, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "model=code_moe", f"model.path={trained / 'target'}",
                        "model.dtype=float32", "workload.max_new_tokens=4", "workload.num_prompts=2", "progress=false",
                        f"results_dir={tmp_path}", "logger.console=false", "device=cpu",
                        f"hydra.run.dir={tmp_path / 'h'}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    import pandas as pd

    row = pd.read_parquet(tmp_path / "default" / "runs.parquet").iloc[0]
    assert row.status == "ok" and row.token_agreement == 1.0 and row.architecture == "mixtral"


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    tokens = tmp_path / "tokens.npy"
    import numpy as np

    np.save(tokens, np.random.default_rng(0).integers(0, 256, 20_000).astype(np.uint16))
    spec = dict(minutes=10.0, max_steps=12, batch_size=2, seq_len=16, lr=1e-3, min_lr_ratio=0.1, warmup_steps=3,
                weight_decay=0.1, grad_clip=1.0, aux_loss_coef=0.02, save_every_s=1000)
    cpu = torch.device("cpu")

    def fresh():
        return tiny_hf_model("mixtral", seed=3).train().requires_grad_(True)

    straight = fresh()
    train(straight, TokenWindows(tokens, 16, 0), spec, tmp_path / "a.pt", cpu, float("inf"), "a", False)
    first = fresh()
    r1 = train(first, TokenWindows(tokens, 16, 0), {**spec, "stop_after_steps": 5}, tmp_path / "b.pt", cpu,
               float("inf"), "b", False)
    assert not r1.finished and r1.steps == 5
    resumed = fresh()
    r2 = train(resumed, TokenWindows(tokens, 16, 0), spec, tmp_path / "b.pt", cpu, float("inf"), "b", False)
    assert r2.finished and r2.steps == 12
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_dense_training_experts_equal_the_sparse_ones():
    """The training-only all-experts path gives the model's own outputs and gradients."""
    import copy

    from moelab.train import dense_experts
    from tests.conftest import tiny_hf_model

    sparse = tiny_hf_model("mixtral", num_local_experts=8, num_experts_per_tok=2).train().requires_grad_(True)
    dense = copy.deepcopy(sparse)
    dense.set_experts_implementation(dense_experts.NAME)
    x = torch.randint(0, 256, (2, 12))
    outs = [m(x, output_router_logits=True) for m in (sparse, dense)]
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=1e-5, atol=1e-5)
    for o in outs:
        (o.logits.square().mean() + o.aux_loss).backward()
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
